"""examples/multimodal through the server: `--source` serves the source's own
samples unchanged, made in the server's thread or in worker processes."""

import logging

import pytest
from support.eir_like_client import EirLikeClient
from support.servers import running_server

from examples.multimodal.source import DATASET_INFO, make_source

SPEC = "examples.multimodal.source:make_source"


@pytest.mark.parametrize("workers", [0, 2])
def test_the_source_option_serves_the_sources_own_samples(
    caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    caplog.set_level(logging.INFO, logger="eirstream")
    local = make_source(seed=2, sequence_length=64, max_iterations=40)
    with running_server(
        source=SPEC, seed=2, max_iterations=40, workers=workers
    ) as server:
        client = EirLikeClient(server.url)
        probe = client.validation_probe()
        assert probe["info"]["payload"] == DATASET_INFO
        received = client.training_pass(batch_size=16)
        client.close()
    assert received == local.samples(range(40))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []

"""Why a download failed decides its class: the hub or index not answering is infrastructure
(retried in a lab), a missing, gated or forbidden file is the request's fault."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import errors as hf

from toolchain.core.errors import EXIT_BAD_INPUT, EXIT_TARGET, fetch_error
from toolchain.models.sources import hub_error


def http_error(cls: type[hf.HfHubHTTPError], status: int) -> hf.HfHubHTTPError:
    url = "https://huggingface.co/a/b/resolve/main/c.gguf"
    return cls(f"{status} Client Error", response=httpx.Response(status, request=httpx.Request("HEAD", url)))


@pytest.mark.parametrize(("exc", "code", "hint"), [
    (hf.LocalEntryNotFoundError("cannot find the requested files in the local cache"), EXIT_TARGET, "access to huggingface.co"),
    (hf.OfflineModeIsEnabled("HF_HUB_OFFLINE=1"), EXIT_TARGET, "--offline"),
    (httpx.ConnectError("[Errno 111] Connection refused"), EXIT_TARGET, "did not answer"),
    (http_error(hf.HfHubHTTPError, 503), EXIT_TARGET, "huggingface.co"),
    (http_error(hf.HfHubHTTPError, 429), EXIT_TARGET, "huggingface.co"),
    (http_error(hf.RepositoryNotFoundError, 404), EXIT_BAD_INPUT, "hf_repo"),
    (http_error(hf.GatedRepoError, 403), EXIT_BAD_INPUT, "licence"),
    (http_error(hf.HfHubHTTPError, 401), EXIT_BAD_INPUT, "HF_TOKEN"),
])
def test_hub_errors_are_classified_by_cause(exc: Exception, code: int, hint: str) -> None:
    err = hub_error(exc, "a/b/c.gguf")
    assert err.exit_code == code and hint in err.hint and err.message.startswith("cannot download a/b/c.gguf: ")


def test_pip_output_tells_a_dead_index_from_a_missing_package() -> None:
    dead = ("WARNING: Retrying (Retry(total=0, ...)) after connection broken by 'NewConnectionError(...: Failed to establish a new "
            "connection: [Errno 111] Connection refused')': /simple/x/\nERROR: No matching distribution found for x")
    assert fetch_error("pip download x failed", "check the index", dead).exit_code == EXIT_TARGET
    assert fetch_error("pip download x failed", "check the index", "ERROR: No matching distribution found for x").exit_code == EXIT_BAD_INPUT

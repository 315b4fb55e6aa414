"""The Hugging Face token: intake (file, $HF_TOKEN, hidden prompt) and checks against the Hub.

The token only ever travels as a `SecretText`; nothing here prints it or puts it in an exception.
Hub calls go through huggingface_hub (imported lazily) at `$HF_ENDPOINT`, so tests and mirrors work.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from gemmactl.cloud.ports import SecretText
from gemmactl.errors import GatedRepoError, NotFoundError, PermissionDeniedError, TransientError, UsageError

TOKENS_URL = "https://huggingface.co/settings/tokens"
_HINT = f"create a read token at {TOKENS_URL} and pass it with --hf-token-file FILE or HF_TOKEN"


def read_token(token_file: Path | None = None, *, env: Mapping[str, str] | None = None) -> SecretText | None:
    """The token from `token_file`, else $HF_TOKEN, else None (the caller may prompt)."""
    if token_file is not None:
        return _from_file(Path(token_file))
    env = os.environ if env is None else env
    if env.get("HF_TOKEN", "").strip():
        return _checked(SecretText(env["HF_TOKEN"]), "HF_TOKEN")
    return None


def prompt_token(ask: Callable[[str], str]) -> SecretText:
    """Ask with a hidden prompt (`ask` is the CLI's no-echo input)."""
    token = SecretText(ask("Hugging Face token (input hidden): "))
    if not token:
        raise UsageError("no Hugging Face token was entered", hint=_HINT)
    return _checked(token, "the prompt")


def _from_file(path: Path) -> SecretText:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not a UTF-8 text file"
        raise UsageError(f"cannot read the Hugging Face token file {path}: {reason}",
                         hint="check the path and its permissions; " + _HINT) from None
    token = SecretText(raw)
    if not token:
        raise UsageError(f"the Hugging Face token file {path} is empty", hint=_HINT)
    return _checked(token, str(path))


def _checked(token: SecretText, where: str) -> SecretText:
    # A token is one word; whitespace inside means a pasted sentence or a multi-line file.
    if any(ch.isspace() for ch in token.reveal()):
        raise UsageError(f"the Hugging Face token from {where} contains spaces or several lines",
                         hint="the file (or variable) must hold just the token, e.g. hf_...")
    return token


# ------------------------------------------------------------------------------------------ hub checks


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def licence_url(model: str) -> str:
    # Licences are accepted on the public site, even when downloads go through a mirror.
    return f"https://huggingface.co/{model}"


def whoami(token: SecretText) -> str:
    """The token owner's user name; PermissionDeniedError when the Hub rejects the token."""
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=hub_endpoint()).whoami(token=token.reveal())
    except Exception as e:  # noqa: BLE001 - translated below, never re-shown raw
        raise _translate(e, what="the Hugging Face token") from None
    return str(info.get("name") or info.get("fullname") or "?")


def check_model_access(model: str, token: SecretText | None) -> None:
    """Raise GatedRepoError / NotFoundError unless `token` may download `model`."""
    from huggingface_hub import HfApi

    try:
        HfApi(endpoint=hub_endpoint()).auth_check(model, token=token.reveal() if token else False)
    except Exception as e:  # noqa: BLE001
        raise _translate(e, what=model) from None


def _translate(e: Exception, *, what: str) -> Exception:
    from huggingface_hub.errors import GatedRepoError as HubGated
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    if isinstance(e, HubGated):
        return GatedRepoError(f"the token has no access to the gated model {what}",
                              hint=f"accept the licence at {licence_url(what)} with the token's account")
    if isinstance(e, RepositoryNotFoundError):
        return NotFoundError(f"model {what} not found on the Hub (or private to another account)",
                             resource=what, hint="check --model / `model` in gemmactl.toml")
    status = getattr(getattr(e, "response", None), "status_code", None)
    if isinstance(e, HfHubHTTPError) and status in (401, 403):
        return PermissionDeniedError(f"the Hub rejected {what} (HTTP {status}): invalid or revoked",
                                     hint=_HINT.replace("pass it", "store it") + " (`gemmactl init`)")
    if isinstance(e, HfHubHTTPError):
        return TransientError(f"the Hub answered HTTP {status} for {what}")
    return TransientError(f"cannot reach the Hugging Face Hub at {hub_endpoint()} ({type(e).__name__})",
                          hint="check the network (or HF_ENDPOINT) and try again")

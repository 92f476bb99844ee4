"""Ray's token authentication (Ray 2.60), as a raystudy user meets it.

Facts this module relies on (checked against the installed Ray):
* a local `ray.init()` and `ray start --head` (when a token exists) turn token
  authentication on; the token is read from $RAY_AUTH_TOKEN, else the file named by
  $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token; `ray get-auth-token` prints it;
* a driver that joins by explicit address sends the token only when its environment has
  RAY_AUTH_MODE=token (`--address auto` on the head finds the setting by itself). Without
  it `ray.init` retries for ~20 s printing "InvalidAuthToken" and fails with a bare
  "Failed to connect": so before ray.init raystudy asks the cluster's GCS one
  unauthenticated question (one gRPC call, well under a second) and, when it answers
  UNAUTHENTICATED, says what to do instead;
* the dashboard asks for the same token in an "Authentication Token Required" box and keeps
  it in a cookie (`ray-authentication-token`); there is no URL form of the token.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import StudyError

MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN = Path("~/.ray/auth_token")
# Any GCS method will do: this one takes an empty request and is the first a driver calls.
_PROBE_METHOD = "/ray.rpc.NodeInfoGcsService/GetClusterId"


def ray_cli() -> str:
    """The `ray` command of the Python running raystudy (the venv's), for messages."""
    exe = Path(sys.executable).with_name("ray")
    return str(exe) if exe.exists() else "ray"


def sends_token() -> bool:
    return os.environ.get(MODE_ENV, "").strip().lower() == "token"


def token_source() -> str:
    """Where Ray reads the token in this environment, in words."""
    if os.environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    if os.environ.get(TOKEN_PATH_ENV):
        return f"the file ${TOKEN_PATH_ENV} ({os.environ[TOKEN_PATH_ENV]})"
    return str(DEFAULT_TOKEN)


def local_token() -> str | None:
    """The token this environment would send (same order as Ray), or None."""
    if os.environ.get(TOKEN_ENV):
        return os.environ[TOKEN_ENV].strip()
    path = Path(os.environ.get(TOKEN_PATH_ENV) or DEFAULT_TOKEN).expanduser()
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def probe(host: str, port: int, timeout: float = 5.0) -> str:
    """'ok', 'unauthenticated' or 'unknown': how the GCS at host:port answers one call that
    carries the token only when this driver would send it."""
    try:
        import grpc
    except ImportError:
        return "unknown"
    token = local_token() if sends_token() else None
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary(_PROBE_METHOD)   # no serializers: raw bytes, an empty request
        try:
            call(b"", timeout=timeout, metadata=metadata)
            return "ok"
        except grpc.RpcError as e:
            return "unauthenticated" if e.code() == grpc.StatusCode.UNAUTHENTICATED else "unknown"


WORKERS = ("every node needs the same token: on each worker node set RAY_AUTH_MODE=token and "
           "RAY_AUTH_TOKEN (or copy ~/.ray/auth_token from the head) before `ray start --address=HEAD:PORT`")


def check_auth(address: str, host: str, port: int) -> None:
    """Refuse, in about a second, a cluster that will reject this driver's credentials."""
    if probe(host, port) != "unauthenticated":
        return
    if not sends_token():
        raise StudyError(
            f"the Ray cluster at '{address}' uses token authentication and this driver sends no token "
            f"(Ray sends it to an explicit address only when {MODE_ENV}=token)", path="--address",
            hint=f"run `{MODE_ENV}=token raystudy run ...`; Ray then reads the token from ${TOKEN_ENV}, else the "
                 f"file in ${TOKEN_PATH_ENV}, else {DEFAULT_TOKEN}, which must hold the cluster's token "
                 f"(`{ray_cli()} get-auth-token` on the head prints it); on the head node `--address auto` "
                 f"needs none of this; {WORKERS}")
    raise StudyError(
        f"the Ray cluster at '{address}' refused this driver's authentication token (from {token_source()})",
        path="--address",
        hint=f"use the cluster's token: `{ray_cli()} get-auth-token` on the head prints it; put it in "
             f"${TOKEN_ENV} or {DEFAULT_TOKEN} here; {WORKERS}")


def check_token_present() -> None:
    """RAY_AUTH_MODE=token without any token: Ray would fail deep inside ray.init."""
    if sends_token() and local_token() is None:
        raise StudyError(f"{MODE_ENV}=token is set but there is no token in {token_source()}",
                         path="--address", hint=f"export {TOKEN_ENV}=<the cluster's token> (`{ray_cli()} "
                                                f"get-auth-token` on the head prints it)")


def login_hint() -> str | None:
    """How to get past the dashboard's token box, or None when authentication is off."""
    if not sends_token():
        return None
    return (f"it asks for the cluster's token: paste the output of `{ray_cli()} get-auth-token` (the token in "
            f"{token_source()}) into its 'Authentication Token' box; the browser keeps it for 30 days")

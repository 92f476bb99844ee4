"""Where raystudy says Ray's authentication token comes from, and the checks that need no
cluster (a real head is in test_cluster_cli.py)."""

from __future__ import annotations

import pytest

from raystudy import clusterauth
from raystudy.errors import StudyError
from raystudy.session import check_address

VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for v in VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return monkeypatch


def test_token_is_read_in_rays_order(clean_env, tmp_path):
    assert clusterauth.local_token() is None and clusterauth.token_source() == "~/.ray/auth_token"
    default = tmp_path / "home" / ".ray" / "auth_token"
    default.parent.mkdir(parents=True)
    default.write_text("from-home\n")
    assert clusterauth.local_token() == "from-home"
    path = tmp_path / "tok"
    path.write_text("from-path")
    clean_env.setenv("RAY_AUTH_TOKEN_PATH", str(path))
    assert clusterauth.local_token() == "from-path" and str(path) in clusterauth.token_source()
    clean_env.setenv("RAY_AUTH_TOKEN", "from-env")
    assert clusterauth.local_token() == "from-env" and clusterauth.token_source() == "$RAY_AUTH_TOKEN"


def test_token_mode_without_a_token_is_named_before_ray_starts(clean_env):
    clean_env.setenv("RAY_AUTH_MODE", "token")
    with pytest.raises(StudyError) as e:
        check_address("127.0.0.1:6379")
    assert "RAY_AUTH_MODE=token is set but there is no token" in str(e.value)
    assert e.value.path == "--address" and "get-auth-token" in str(e.value)


def test_login_hint_only_with_token_authentication(clean_env):
    assert clusterauth.login_hint() is None
    clean_env.setenv("RAY_AUTH_MODE", "token")
    hint = clusterauth.login_hint()
    assert "get-auth-token" in hint and "Authentication Token" in hint


def test_probe_of_a_closed_port_decides_nothing(clean_env):
    from rayhead import free_port
    assert clusterauth.probe("127.0.0.1", free_port(), timeout=2) == "unknown"

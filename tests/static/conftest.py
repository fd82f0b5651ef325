"""Fixtures of the static deployment checks: the templates rendered by Ansible on the controller."""

import shutil

import pytest

from deploy_static import SERVER_NAME, Rendered, make_throwaway_cert, render


@pytest.fixture(scope="session")
def rendered(tmp_path_factory) -> Rendered:
    """The templates rendered with the roles' defaults, plus what `nginx -t` needs next to them."""
    out = render(tmp_path_factory.mktemp("rendered"))
    shutil.copy("/etc/nginx/mime.types", out.root / "nginx" / "mime.types")
    make_throwaway_cert(out.root / "nginx" / "tls", SERVER_NAME)
    return out

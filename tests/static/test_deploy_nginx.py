"""The rendered nginx configuration: `nginx -t` on a temporary nginx.conf tree, and the settings the
zero-downtime restarts and the TLS policy depend on."""

import re
import shutil

from deploy_static import SERVER_NAME, env_file, make_throwaway_cert, render, run, tool

MOZILLA_INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)


def nginx_test(conf) -> str:
    """`nginx -t` on the given main configuration; returns its complaint, "" when it is valid."""
    result = run(tool("nginx"), "-t", "-q", "-c", conf)
    return "" if result.returncode == 0 else result.stderr or f"exit {result.returncode}"


def directives(text: str, name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^\s*{name}\s+([^;]*);", text, re.MULTILINE)]


def block(text: str, header: str) -> str:
    """The body of the first `header { ... }` block (blocks nest only one level here)."""
    start = text.index(header)
    depth, i = 0, text.index("{", start)
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    raise AssertionError(f"unclosed {header}")


def test_nginx_accepts_the_rendered_configuration(rendered):
    assert nginx_test(rendered.nginx_conf) == ""


def test_nginx_test_reports_a_broken_site(rendered, tmp_path):
    # Same tree, with one directive nginx does not know in the site.
    site = rendered.root / "nginx" / "sites-enabled" / "api.conf"
    original = site.read_text()
    try:
        site.write_text(original.replace("proxy_http_version 1.1;", "proxy_http_versio 1.1;"))
        assert "unknown directive" in nginx_test(rendered.nginx_conf)
    finally:
        site.write_text(original)


def test_upstream_has_a_peer_for_every_cached_connection_never_marked_dead(rendered):
    site = rendered.text("nginx/sites-enabled/api.conf")
    upstream = block(site, "upstream api_backend")
    keepalive = int(directives(upstream, "keepalive")[0])
    # A restart can kill every cached connection; a retry then still has a fresh peer (twice).
    assert keepalive > 0
    assert directives(upstream, "server") == ["unix:/run/api/api.sock max_fails=0"] * (keepalive + 2)
    keepalive_timeout = int(directives(upstream, "keepalive_timeout")[0].rstrip("s"))
    assert 1 <= keepalive_timeout < int(env_file(rendered.text("api.env"))["API_KEEPALIVE"])


def test_api_server_proxies_with_retry_and_the_expected_headers(rendered):
    site = rendered.text("nginx/sites-enabled/api.conf")
    server = site[site.index(f"server_name {SERVER_NAME};", site.index("listen 443 ssl http2;")):]
    assert directives(server, "proxy_http_version") == ["1.1"]
    # Never "timeout": a request that timed out was running in the app.
    assert directives(server, "proxy_next_upstream") == ["error"]
    assert directives(server, "proxy_next_upstream_tries") == ["2"]
    assert directives(server, "proxy_pass_header") == ["X-Accel-Buffering"]
    headers = dict(h.split(None, 1) for h in directives(server, "proxy_set_header"))
    assert headers == {
        "Host": "$host", "X-Forwarded-For": "$remote_addr", "X-Forwarded-Proto": "$scheme",
        "X-Request-ID": "$api_request_id", "Upgrade": "$http_upgrade", "Connection": "$api_connection",
    }
    assert 'Strict-Transport-Security "max-age=63072000" always' in directives(server, "add_header")
    assert directives(server, "limit_req") == ["zone=api burst=100 nodelay"]
    assert directives(server, "client_max_body_size") == ["1m"]


def test_unknown_names_are_turned_away(rendered):
    site = rendered.text("nginx/sites-enabled/api.conf")
    assert re.search(r"listen 80 default_server;.*?server_name _;\s*return 444;", site, re.DOTALL)
    assert re.search(r"listen 443 ssl http2 default_server;.*?ssl_reject_handshake on;", site, re.DOTALL)


def test_port_80_serves_acme_challenges_and_redirects_the_rest(rendered):
    site = rendered.text("nginx/sites-enabled/api.conf")
    http = block(site, "server {\n    listen 80;")
    assert "location ^~ /.well-known/acme-challenge/" in http
    assert directives(http, "return") == ["301 https://$host$request_uri"]


def test_tls_policy_is_mozilla_intermediate(rendered):
    main = rendered.text("nginx/nginx.conf")
    assert directives(main, "ssl_protocols") == ["TLSv1.2 TLSv1.3"]
    assert directives(main, "ssl_ciphers") == [MOZILLA_INTERMEDIATE_CIPHERS]
    assert directives(main, "ssl_prefer_server_ciphers") == ["off"]
    assert directives(main, "ssl_session_tickets") == ["off"]
    assert directives(main, "ssl_session_cache") == ["shared:MozSSL:10m"]
    assert directives(main, "ssl_ecdh_curve") == ["X25519:prime256v1:secp384r1"]
    assert directives(main, "server_tokens") == ["off"]


def test_a_web_host_gives_nginx_half_its_cores_and_the_workers_the_rest(rendered, tmp_path):
    # No facts in this render: 2 vCPUs, as api_workers assumes then too.
    assert directives(rendered.text("nginx/nginx.conf"), "worker_processes") == ["1"]
    assert directives(render(tmp_path, nginx_worker_processes=3).text("nginx/nginx.conf"), "worker_processes") == ["3"]


def test_newer_nginx_and_openssl_get_http2_on_and_the_hybrid_group(tmp_path):
    # As `nginx -V` prints it when nginx runs with another OpenSSL than it was built with.
    newer = ("nginx version: nginx/1.27.4\nbuilt with OpenSSL 3.0.13 30 Jan 2024 "
             "(running with OpenSSL 3.5.1 1 Jul 2025)\nTLS SNI support enabled\n")
    out = render(tmp_path, nginx_build={"stderr": newer})
    site, main = out.text("nginx/sites-enabled/api.conf"), out.text("nginx/nginx.conf")
    assert "http2" not in " ".join(directives(site, "listen"))
    assert directives(site, "http2") == ["on", "on"]
    assert directives(main, "ssl_ecdh_curve") == ["X25519MLKEM768:X25519:prime256v1:secp384r1"]


def locations(server: str) -> dict[str, str]:
    """`location <match> { ... }` blocks of a server: match -> body."""
    found = re.finditer(r"^\s*location\s+([^{\n]+)\{", server, re.MULTILINE)
    return {m.group(1).strip(): block(server, m.group(0)) for m in found}


def test_probe_paths_are_proxied_without_the_rate_limit(rendered, tmp_path):
    custom = render(tmp_path, api_health_path="/livez", api_ready_path="/_/ready")
    shutil.copy("/etc/nginx/mime.types", custom.root / "nginx" / "mime.types")
    make_throwaway_cert(custom.root / "nginx" / "tls", SERVER_NAME)
    assert nginx_test(custom.nginx_conf) == ""
    for out, probes in ((rendered, ("/health", "/ready")), (custom, ("/livez", "/_/ready"))):
        site = out.text("nginx/sites-enabled/api.conf")
        server = site[site.index(f"server_name {SERVER_NAME};", site.index("listen 443 ssl http2;")):]
        found = locations(server)
        assert set(found) == {"/", *(f"= {path}" for path in probes)}
        for path in probes:
            assert directives(found[f"= {path}"], "proxy_pass") == ["http://api_backend"]
            assert directives(found[f"= {path}"], "limit_req") == []
        assert directives(found["/"], "limit_req") == ["zone=api burst=100 nodelay"]


def site_server(out) -> str:
    site = out.text("nginx/sites-enabled/api.conf")
    return site[site.index(f"server_name {SERVER_NAME};", site.index("listen 443 ssl http2;")):]


def checked_render(tmp_path, **overrides):
    """render() plus what `nginx -t` needs beside it."""
    out = render(tmp_path, **overrides)
    shutil.copy("/etc/nginx/mime.types", out.root / "nginx" / "mime.types")
    make_throwaway_cert(out.root / "nginx" / "tls", SERVER_NAME)
    return out


def test_one_probe_path_for_both_gets_one_location(tmp_path):
    out = checked_render(tmp_path, api_health_path="/healthz", api_ready_path="/healthz")
    assert nginx_test(out.nginx_conf) == ""
    assert set(locations(site_server(out))) == {"/", "= /healthz"}


def test_long_requests_get_their_own_read_timeout_and_the_rest_a_prompt_504(tmp_path):
    out = checked_render(tmp_path, api_long_requests=[{"path": "/reports", "timeout": 25}],
                         api_graceful_timeout=30)
    assert nginx_test(out.nginx_conf) == ""
    server = site_server(out)
    found = locations(server)
    assert directives(found["^~ /reports"], "proxy_read_timeout") == ["25s"]
    assert directives(found["^~ /reports"], "limit_req") == ["zone=api burst=100 nodelay"]
    # Everything else: nginx's own timeout, and a timed-out request is never sent again.
    assert directives(server, "proxy_read_timeout")[0] == "30s"
    assert "timeout" not in directives(server, "proxy_next_upstream")[0]

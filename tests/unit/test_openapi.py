"""The example app's OpenAPI schema lists the answers its routes really give besides 200."""

from app.main import app


def statuses() -> dict[str, set[str]]:
    return {f"{method.upper()} {path}": set(operation["responses"])
            for path, operations in app.openapi()["paths"].items()
            for method, operation in operations.items()}


def test_redis_routes_list_503_cache_lookups_404_and_body_routes_400():
    listed = statuses()
    for route in ("GET /cache/{key}", "PUT /cache/{key}", "DELETE /cache/{key}",
                  "POST /counters/{name}", "GET /jobs", "GET /ready"):
        assert "503" in listed[route], route
    assert {"404"} <= listed["GET /cache/{key}"] & listed["DELETE /cache/{key}"]
    assert {"400", "422"} <= listed["PUT /cache/{key}"] & listed["POST /counters/{name}"]
    assert "409" in listed["POST /counters/{name}"]
    assert listed["GET /health"] == {"200"}


def test_database_routes_list_503_the_lookup_404_and_the_insert_201_400_422():
    listed = statuses()
    for route in ("POST /notes", "GET /notes/count", "GET /notes/{note_id}"):
        assert "503" in listed[route], route
    assert "404" in listed["GET /notes/{note_id}"]
    assert {"201", "400", "422"} <= listed["POST /notes"]

"""jetscan serve on a store made by results.write_run (no Pythia: seconds, not minutes):
query errors as JSON 400s, CORS preflights, 404s that name what is served (never the server's
folders), settings checked at the edge and range errors answered alike."""

from __future__ import annotations

import pytest

from jetscan.storage import results as res
from tests.storage.test_results import make_evaluation

pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")

TOKEN = "serve-store-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two evaluated runs (pca_b4, pca_b8) of 300 jets each, in a folder whose path is distinctive."""
    path = tmp_path_factory.mktemp("private-server-folder") / "study.zarr"
    for run, bottleneck in (("pca_b4", 4), ("pca_b8", 8)):
        ev = make_evaluation(run, n=300, kind="pca", config={"model": "pca", "bottleneck": bottleneck}, history=False)
        res.write_run(str(path), ev, res.summarise(ev))
    return path


def _client(store, **settings):
    from starlette.testclient import TestClient

    from jetscan.jobs.serve import ServeSettings, create_app

    return TestClient(create_app([str(store)], token=TOKEN, settings=ServeSettings(**settings)), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def client(store):
    with _client(store) as c:
        yield c


def test_filters_of_the_wrong_type_answer_400_naming_column_and_fix(client):
    for query, message in [
        ("bottleneck in [4, 'x']", "column 'bottleneck' holds numbers (int64), not str 'x': give a number"),
        ("auc == 'high'", "column 'auc' holds numbers (double), not str 'high'"),
        ("run > 3", "column 'run' holds text (string), not int 3: quote the value"),
    ]:
        r = client.get("/api/stores/study/results", params={"query": query}, headers=AUTH)
        assert r.status_code == 400, (query, r.status_code, r.text)
        assert message in r.json()["error"], query
    r = client.get("/api/stores/study/results", params={"query": "signal in []"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["total"] == 0
    r = client.get("/api/stores/study/results", params={"query": "signal not in []"}, headers=AUTH)
    assert r.status_code == 200 and r.json()["total"] == 2


def test_cors_preflight_is_answered_before_the_token_check(store):
    origin = "https://plots.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization, range"}
    with _client(store, cors_origins=(origin,)) as c:
        # a browser sends no token with its preflight: it must get CORS headers, not a 401
        for path in ("/api/stores/study/results", "/stores/study/zarr.json"):
            r = c.options(path, headers=preflight)
            assert r.status_code == 200, (path, r.status_code, r.text)
            assert r.headers["access-control-allow-origin"] == origin
            assert {"authorization", "range"} <= {h.strip() for h in r.headers["access-control-allow-headers"].lower().split(",")}
            assert set(r.headers["access-control-allow-methods"].replace(" ", "").split(",")) == {"GET", "HEAD"}
        r = c.get("/api/stores/study/results", params={"limit": 1}, headers={**AUTH, "Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
        # the browser may read the paging headers
        assert {"x-total-rows", "x-next-offset"} <= set(r.headers["access-control-expose-headers"].lower().replace(" ", "").split(","))
        # the guard's refusals carry CORS headers too, so a page can show why
        r = c.get("/api/stores/study/results", headers={"Origin": origin})
        assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
        # the token is still required for everything but the preflight; other origins get nothing
        r = c.options("/api/stores/study/results", headers={**preflight, "Origin": "https://evil.example"})
        assert r.status_code != 200 and "access-control-allow-origin" not in r.headers
        r = c.request("OPTIONS", "/api/stores/study/results", headers=AUTH)  # not a preflight
        assert r.status_code == 405


def test_not_found_answers_name_what_is_served_never_the_server_folder(store, tmp_path):
    import shutil

    torn = tmp_path / "private-copy" / "study.zarr"
    shutil.copytree(store, torn)
    shutil.rmtree(torn / "results" / "pca_b8")  # committed rows whose arrays are gone
    with _client(torn) as c:
        answers = {
            "/api/stores/study/runs/nosuch/roc?signal=top": "store 'study' has no results for run 'nosuch'; runs with results: pca_b4, pca_b8",
            "/api/stores/study/runs/nosuch/histograms": "store 'study' has no results for run 'nosuch'",
            "/api/stores/study/runs/pca_b8/roc?signal=top": "no zarr group 'results/pca_b8' in store 'study'",
            "/api/stores/study/runs/pca_b4/roc?signal=gluino": "run 'pca_b4' has no ROC for signal 'gluino'",
            "/stores/study/results/nosuch/zarr.json": "no file 'results/nosuch/zarr.json' in the store",
            "/api/stores/other": "no store 'other' here; stores: study",
        }
        for path, message in answers.items():
            r = c.get(path, headers=AUTH)
            assert r.status_code == 404, (path, r.status_code, r.text)
            error = r.json()["error"]
            assert message in error, (path, error)
            for secret in (str(torn), str(tmp_path), "private-copy", str(store.parent)):
                assert secret not in error, (path, error)


def test_default_page_rows_above_max_page_rows_is_refused_at_the_edge(store):
    from jetscan.core.errors import ConfigError
    from jetscan.jobs.serve import ServeSettings, serve_cmd

    with pytest.raises(ValueError, match=r"default_page_rows \(500\) is more than max_page_rows \(100\): .*default_page_rows"):
        ServeSettings(max_page_rows=100, default_page_rows=500)
    assert ServeSettings(max_page_rows=100, default_page_rows=100).default_page_rows == 100
    # the command names the problem as one ConfigError, before it binds or serves anything
    with pytest.raises(ConfigError, match=r"max_page_rows: .*greater than or equal to 1 \(got 0\)"):
        serve_cmd(store=[str(store)], host="127.0.0.1", port=0, token_file=None, no_auth=True, max_concurrency=4, max_page_rows=0)


def test_range_errors_answer_alike_on_an_empty_file(store, tmp_path):
    import shutil

    copy = tmp_path / "study.zarr"
    shutil.copytree(store, copy)
    (copy / "results" / "pca_b4" / "empty.bin").write_bytes(b"")
    with _client(copy) as c:
        for value in ("bytes=-4", "bytes=0-", "bytes=0-3", "bytes=-0"):
            r = c.get("/stores/study/results/pca_b4/empty.bin", headers={**AUTH, "Range": value})
            assert r.status_code == 416, (value, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json", value
            assert r.headers["content-range"] == "bytes */0", value
            assert value in r.json()["error"], value
        r = c.get("/stores/study/results/pca_b4/empty.bin", headers=AUTH)
        assert r.status_code == 200 and r.content == b""

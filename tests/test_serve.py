"""The HTTP service (`ferlab serve`) through FastAPI's TestClient: no port is opened."""

import io
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("onnxruntime")

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's notice about httpx vs httpx2
    from fastapi.testclient import TestClient

from ferlab.cli import main  # noqa: E402
from ferlab.labels import FER2013_CLASSES  # noqa: E402
from ferlab.serve import create_app, is_loopback  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def encode(pixels, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def photos(astronaut, cat):
    return {
        "astronaut.png": encode(astronaut, "PNG"),
        "cat.jpg": encode(cat, "JPEG", quality=90),
        "gray.jpg": encode(np.full((240, 320, 3), 128, np.uint8), "JPEG"),
    }


@pytest.fixture(scope="module")
def client(fernet_weights):
    app = create_app(fernet_weights, max_upload_mb=2, detector="blazeface", backend="onnx")
    with TestClient(app) as c:  # runs the lifespan: the Recognizer is loaded here, once
        yield c


def post(client, data, name="photo.png", mime="image/png"):
    return client.post("/v1/predict", files={"image": (name, data, mime)})


def assert_json_error(r, status, text):
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"detail"} and text in body["detail"] and "Traceback" not in body["detail"]


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["model"] == "fernet_s" and body["backend"] == "onnx"
    assert body["classes"] == list(FER2013_CLASSES) and body["detector"] == "blazeface"


def test_predict_one_face(client, photos):
    r = post(client, photos["astronaut.png"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["width"] == 512 and body["height"] == 512
    (face,) = body["faces"]
    assert list(face["probs"]) == list(FER2013_CLASSES)
    assert sum(face["probs"].values()) == pytest.approx(1, abs=1e-4)
    assert face["label"] in FER2013_CLASSES and len(face["box"]) == 4
    assert all(abs(a - b) <= 6 for a, b in zip(face["box"], [174, 68, 104, 104]))


def test_no_face_gives_an_empty_list(client, photos):
    for name in ("cat.jpg", "gray.jpg"):
        r = post(client, photos[name], name, "image/jpeg")
        assert r.status_code == 200 and r.json()["faces"] == []


def test_raw_image_body(client, photos):
    r = client.post("/v1/predict", content=photos["astronaut.png"], headers={"content-type": "image/png"})
    assert r.status_code == 200 and len(r.json()["faces"]) == 1


def test_bad_input_gives_json_errors_and_the_server_keeps_serving(client, photos):
    assert_json_error(post(client, b"this is not an image\n", "notes.txt", "text/plain"), 415, "not an image")
    assert_json_error(post(client, photos["cat.jpg"][:2000], "cut.jpg", "image/jpeg"), 400, "truncated or corrupt")
    assert_json_error(post(client, b"", "empty.png"), 400, "empty")
    assert_json_error(client.post("/v1/predict", files={"photo": ("a.png", photos["astronaut.png"], "image/png")}),
                      422, "'image'")
    assert_json_error(client.post("/v1/predict", json={"image": "x"}), 415, "multipart/form-data")
    assert_json_error(client.post("/v1/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}),
                      400, "malformed")
    assert_json_error(client.get("/no-such-page"), 404, "Not Found")
    assert post(client, photos["astronaut.png"]).status_code == 200


def test_oversize_upload_is_413(fernet_weights, photos):
    big = photos["astronaut.png"]  # 0.4 MB against a 0.1 MB limit
    with TestClient(create_app(fernet_weights, max_upload_mb=0.1, detector="blazeface")) as c:
        assert_json_error(post(c, big), 413, "above the 0.1 MB limit")  # refused from Content-Length

        def chunks():  # no Content-Length: counted while reading
            for i in range(0, len(big), 32768):
                yield big[i:i + 32768]
        r = c.post("/v1/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
        assert r.request.headers.get("content-length") is None
        assert_json_error(r, 413, "above the 0.1 MB limit")
        assert c.get("/healthz").status_code == 200
        small = encode(np.asarray(Image.fromarray(np.zeros((64, 64, 3), np.uint8))), "PNG")
        assert post(c, small).json()["faces"] == []


def test_concurrent_requests_share_the_model(client, photos):
    jobs = [("astronaut.png", 1), ("cat.jpg", 0), ("gray.jpg", 0)] * 8

    def one(job):
        name, n = job
        mime = "image/png" if name.endswith("png") else "image/jpeg"
        r = post(client, photos[name], name, mime)
        return r.status_code, len(r.json()["faces"]), n

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs))
    assert all(status == 200 and got == want for status, got, want in results), results


def test_web_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'src="/static/app.js"' in r.text and "default-src 'self'" in r.headers["content-security-policy"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing fetched from elsewhere
    for name in ("app.js", "style.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and "http://" not in r.text and "https://" not in r.text


def test_ensemble(fernet_weights, other_weights, photos):
    with TestClient(create_app([fernet_weights, other_weights], detector="blazeface")) as c:
        body = c.get("/healthz").json()
        assert body["model"] == "fernet_s + fernet_s"
        assert body["weights"] == "fernet_s_random.safetensors + fernet_s_other.safetensors"
        faces = post(c, photos["astronaut.png"]).json()["faces"]
        assert len(faces) == 1 and sum(faces[0]["probs"].values()) == pytest.approx(1, abs=1e-5)


def test_cli_bad_model_is_a_one_line_error(capsys, fernet_weights, tmp_path):
    code = main(["serve", "--model", str(tmp_path / "missing.safetensors"), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing.safetensors" in err
    code = main(["serve", "--model", str(fernet_weights), "--model", str(tmp_path / "missing2.safetensors"), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "missing2.safetensors" in err


def test_is_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("8.8.8.8") and not is_loopback("no-such-host.invalid")

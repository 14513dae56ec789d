"""`vitkit serve`: the HTTP API answers like `vitkit predict`, and bad uploads get a clear 4xx."""
import base64
import io
import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

import vitkit
from vitkit.inference.predict import load_classifier, predict_files
from vitkit.serve import Predictor, make_server
from vitkit.train import save_checkpoint


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve") / "ckpt"
    model = vitkit.create_model("vit_mini_patch4_28", img_size=16, embed_dim=32, depth=1, num_heads=2, num_classes=3)
    save_checkpoint(folder, model, dict(classes=["ant", "bee", "cat"], mean=[0.5], std=[0.25], img_size=16,
                                        in_chans=1))
    classifier, config, model = load_classifier(folder, "fp32")
    server = make_server(Predictor(classifier, config, str(folder), "torch fp32", topk=2, model=model), port=0,
                         max_body=50_000)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}", classifier, config, folder
    server.shutdown()
    server.server_close()


def call(url: str, data: bytes | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST" if data is not None
                                                           else "GET"), timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_predict_answers_what_vitkit_predict_prints(served, tmp_path):
    url, classifier, config, _ = served
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 4), dtype=np.uint8), "RGBA")
    (tmp_path / "p.png").write_bytes(png(picture))
    status, body = call(f"{url}/predict?name=p.png&topk=3", png(picture))
    assert status == 200
    answer = json.loads(body)
    expected = next(predict_files(classifier, [tmp_path / "p.png"], config, topk=3))
    assert answer["name"] == "p.png" and answer["ms"] > 0
    assert [(t["class"], t["prob"]) for t in answer["topk"]] == expected.topk
    assert len(json.loads(call(f"{url}/predict", png(picture))[1])["topk"]) == 2  # the server's default


@pytest.mark.parametrize("path, data, status, message", [
    ("/predict?name=x.png", b"GIF89a but not really", 400, "x.png: unreadable image data"),
    ("/predict?name=empty.jpg", b"", 400, "empty.jpg: the image is empty"),
    ("/predict?name=big.png", b"\0" * 60_000, 413, "big.png: 60,000 bytes is over the limit of 50,000"),
    ("/predict?topk=0", png(Image.new("L", (8, 8))), 400, "topk must be a positive integer"),
    ("/predict?topk=%C2%B2", png(Image.new("L", (8, 8))), 400, "topk must be a positive integer"),  # '²'.isdigit()
    ("/predict", None, 405, "/predict takes POST"),
    ("/classify", b"x", 404, "/classify: no such endpoint"),
    ("/nothing", None, 404, "/nothing: no such endpoint"),
])
def test_bad_requests_get_a_clear_error(served, path, data, status, message):
    code, body = call(served[0] + path, data)
    assert code == status and message in json.loads(body)["error"]


def multipart(fields: list[tuple[str, str | None, bytes]], boundary: str = "vitkitBoundary42") -> tuple[bytes, str]:
    """A form body as curl -F builds it: (field name, file name or None, content) per part."""
    body = b""
    for field, filename, content in fields:
        disposition = f'form-data; name="{field}"' + (f'; filename="{filename}"' if filename else "")
        kind = "image/png" if filename else "text/plain"
        body += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {kind}\r\n\r\n"
                 .encode() + content + b"\r\n")
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_a_form_upload_is_read_like_the_raw_image(served):
    url = served[0]
    image = png(Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 20), dtype=np.uint8)))
    raw = json.loads(call(f"{url}/predict", image)[1])
    body, content_type = multipart([("note", None, b"hello"), ("file", "shoe.png", image)])
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=30) as r:
        answer = json.loads(r.read())
    assert answer["name"] == "shoe.png" and answer["topk"] == raw["topk"]
    body, content_type = multipart([("note", None, b"hello")])
    request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                     headers={"Content-Type": content_type})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(request, timeout=30)
    assert e.value.code == 400 and "the form holds no file" in json.loads(e.value.read())["error"]


def test_explain_returns_the_image_beside_its_rollout_overlay(served):
    url = served[0]
    picture = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16))
    status, body = call(f"{url}/explain?name=ramp.png", png(picture))
    assert status == 200
    strip = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    assert strip.shape == (224, 448, 3)  # 16 px enlarged 14x (nearest), input then overlay
    assert np.array_equal(strip[::14, :224:14, 0], np.asarray(picture))  # the left half is the input
    assert not np.array_equal(strip[:, :224], strip[:, 224:])
    code, body = call(f"{url}/explain?name=bad.png", b"not an image")
    assert code == 400 and "bad.png: unreadable image data" in json.loads(body)["error"]
    both = json.loads(call(f"{url}/predict?name=ramp.png&explain=1", png(picture))[1])  # one upload, as the page does
    explanation = base64.b64encode(call(f"{url}/explain", png(picture))[1]).decode()
    assert both["explanation"] == "data:image/png;base64," + explanation
    assert len(both["topk"]) == 2 and "explanation" not in json.loads(call(f"{url}/predict", png(picture))[1])


def test_a_cnn_is_served_without_explain():
    from vitkit.errors import VitkitError
    cnn = vitkit.create_model("resnet_mini_28").eval()
    config = dict(classes=[str(i) for i in range(10)], mean=[0.5], std=[0.5], img_size=28, in_chans=1)
    predictor = Predictor(cnn, config, "cnn", "torch", model=cnn)
    assert predictor.about["explain"] is False
    with pytest.raises(VitkitError, match="no attention layers"):
        predictor.explain(png(Image.new("L", (28, 28))), "x.png")
    with pytest.raises(VitkitError, match="no attention layers"):
        predictor.predict(png(Image.new("L", (28, 28))), "x.png", explain=True)


def test_page_health_and_info(served):
    url = served[0]
    status, page = call(url + "/")
    assert status == 200 and b'type="file"' in page and b"predict?" in page and b"explain=1" in page
    assert b"topk=" not in page  # the page lists the server's --topk, as curl gets without ?topk
    assert json.loads(call(url + "/health")[1]) == {"status": "ok"}
    with urllib.request.urlopen(urllib.request.Request(url + "/health", method="HEAD"), timeout=30) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json" and r.read() == b""
    info = json.loads(call(url + "/info")[1])
    assert info["classes"] == ["ant", "bee", "cat"] and (info["img_size"], info["in_chans"]) == (16, 1)
    assert info["explain"] is True and info["checkpoint"] == "ckpt"  # the run's name, not where it lives


def test_the_serve_command_listens_and_stops(served):
    """`vitkit serve --port 0` prints its address, answers, and stops on Ctrl-C (SIGINT)."""
    import signal
    # A shell's background job (`pytest &`) ignores SIGINT, and an ignored signal stays ignored across
    # exec; the server is given Ctrl-C's usual meaning, as in a terminal.
    proc = subprocess.Popen([sys.executable, "-m", "vitkit", "serve", "--checkpoint", str(served[3]), "--port", "0",
                             "--precision", "fp32"], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = proc.stderr.readline()
        assert line.startswith("serving ") and "http://127.0.0.1:" in line, line
        url = line.split()[3].rstrip("/")
        status, body = call(url + "/predict?name=a.png", png(Image.new("RGB", (20, 20), "red")))
        assert status == 200 and len(json.loads(body)["topk"]) == 3  # --topk 5, capped at the 3 classes
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0


def test_a_port_out_of_range_is_refused_before_loading_anything(capsys):
    from vitkit.cli import main
    with pytest.raises(SystemExit) as e:
        main(["serve", "--checkpoint", "/no/such/run", "--port", "70000"])
    assert e.value.code == 2 and "a port is 0 to 65535" in capsys.readouterr().err


def test_an_ipv6_host_gets_an_ipv6_socket(served, monkeypatch):
    """Checked without binding, so the test does not depend on the machine's IPv6 set-up."""
    import socket
    from vitkit.serve import server as serve_module
    url, classifier, config, folder = served
    monkeypatch.setattr(serve_module._IPv6Server, "server_bind", lambda self: None)
    monkeypatch.setattr(serve_module._IPv6Server, "server_activate", lambda self: None)
    server = make_server(Predictor(classifier, config, str(folder), "torch"), host="::1", port=0)
    assert server.socket.family == socket.AF_INET6
    server.server_close()
    ipv4 = make_server(Predictor(classifier, config, str(folder), "torch"), host="127.0.0.1", port=0)
    assert ipv4.socket.family == socket.AF_INET
    ipv4.server_close()


def test_connections_past_the_cap_get_503_at_once(served):
    """Stalled clients hold one thread each; past the cap the server answers 503 instead of spawning more."""
    import socket
    _, classifier, config, folder = served
    server = make_server(Predictor(classifier, config, str(folder), "torch fp32"), port=0, max_connections=1)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        stalled = socket.create_connection(("127.0.0.1", server.server_port))  # sends nothing
        code, body = call(url + "/health")
        assert code == 503 and "too many connections" in json.loads(body)["error"]
        code, body = call(url + "/predict", b"\0" * 3_000_000)  # an upload still sending: a 503, not a reset
        assert code == 503 and "too many connections" in json.loads(body)["error"]
        with ThreadPoolExecutor(6) as pool:  # refused uploads at once: each drained, none reset
            answers = list(pool.map(lambda _: call(url + "/predict", b"\0" * 3_000_000), range(6)))
        assert [code for code, _ in answers] == [503] * 6
        stalled.close()
        for _ in range(50):  # the stalled connection's thread notices the close and frees its slot
            code, _ = call(url + "/health")
            if code == 200:
                break
            threading.Event().wait(0.05)
        assert code == 200
    finally:
        server.shutdown()
        server.server_close()

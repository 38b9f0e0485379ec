"""EmotionService without the web: the same faces as detect_emotions on every backend, and from
many threads at once."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest


from gpunet import backend
from gpunet.faces import detect_emotions
from gpunet.serve import EmotionService


def test_the_service_answers_as_detect_emotions_on_every_backend(xp, photos, tmp_path):
    """On the emulated GPU (and CuPy where there is one) the forward pass runs in the service's own
    thread, which must compute on the backend, and the device, chosen in the main thread."""
    service = EmotionService()  # the packaged model, loaded on the backend under test
    try:
        assert backend.get_array_module(next(iter(service.model.params.values()))) is xp
        got = service.analyse(photos["astronaut.jpg"], "a.jpg")
    finally:
        service.close()
    (tmp_path / "a.jpg").write_bytes(photos["astronaut.jpg"])
    with backend.using("numpy"):
        expected = detect_emotions(tmp_path / "a.jpg")
    assert got["size"] == [512, 512] and [f["box"] for f in got["faces"]] == [f["box"] for f in expected]
    for f, e in zip(got["faces"], expected):
        assert f["emotions"].keys() == e["emotions"].keys()
        np.testing.assert_allclose(list(f["emotions"].values()), list(e["emotions"].values()), atol=1e-5)


def test_many_threads_at_once_get_each_their_own_answer(model, photos):
    """Different photos from 12 threads at once: each answer is the one that photo gets alone."""
    names = ["astronaut-192.png", "coffee.png", "astronaut.jpg"] * 4
    service = EmotionService(model, workers=3)
    try:
        alone = {n: service.analyse(photos[n], n)["faces"] for n in set(names)}
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            together = list(pool.map(lambda n: service.analyse(photos[n], n)["faces"], names))
    finally:
        service.close()
    assert [len(alone[n]) for n in ("astronaut-192.png", "coffee.png", "astronaut.jpg")] == [1, 0, 1]
    for n, faces in zip(names, together):
        assert faces == alone[n], n


def test_a_bad_photo_is_a_value_error_naming_it(model, photos):
    service = EmotionService(model, max_pixels=100_000)
    try:
        with pytest.raises(ValueError, match=r"^notes\.txt: not a readable image \(not JPEG or PNG\)$"):
            service.analyse(photos["notes.txt"], "notes.txt")
        with pytest.raises(ValueError, match=r"^big\.png: refused, too many pixels \(512 x 512 pixels"):
            service.analyse(photos["astronaut.png"], "big.png")  # the service's own pixel limit
        assert service.analyse(photos["astronaut-192.png"])["size"] == [192, 192]  # 36,864 pixels
    finally:
        service.close()

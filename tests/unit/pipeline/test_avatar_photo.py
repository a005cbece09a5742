"""Photos into avatar pictures (pipeline/avatar_photo.py), on real photographs.

scikit-image ships a photograph of a person (``astronaut``) and of a cat (``chelsea``);
Pillow writes them as JPEG, PNG and WebP, with an EXIF orientation. Checked: the header
check takes those three formats and refuses others and decompression bombs without
decoding them; the EXIF orientation is applied (a sideways-stored portrait is found
upright); the person's face is found and framed head-and-shoulders at the output size, the
cat has no face, a small picture is refused with the minimum size, several faces give the
largest.
"""

from __future__ import annotations

import io

import numpy as np
import PIL.Image
import pytest
from skimage import data

from headcast.pipeline.avatar_photo import (
    FACE_WIDTH_SHARE,
    MAX_UPSCALE,
    NO_FACE,
    TOO_SMALL,
    FaceDetector,
    PhotoRejected,
    PhotoTooLarge,
    UnsupportedPhoto,
    decode_photo,
    frame_portrait,
    inspect_photo,
)

HEIGHT, WIDTH = 768, 448
MAX_PIXELS = 50_000_000
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW = 6
"""EXIF orientation 6: the stored picture must be turned 90 degrees clockwise to be upright."""


def encode(image: np.ndarray, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    PIL.Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_jpeg_png_and_webp_are_taken_from_their_header(fmt: str) -> None:
    info = inspect_photo(encode(data.astronaut(), fmt), MAX_PIXELS)
    assert (info.format, info.width, info.height) == (fmt, 512, 512)


@pytest.mark.parametrize(
    "payload",
    [encode(data.astronaut(), "GIF"), encode(data.astronaut(), "BMP"), b"not a picture", b""],
    ids=["gif", "bmp", "text", "empty"],
)
def test_other_files_are_unsupported(payload: bytes) -> None:
    with pytest.raises(UnsupportedPhoto, match="JPEG, PNG or WebP"):
        inspect_photo(payload, MAX_PIXELS)


def test_a_decompression_bomb_is_refused_from_its_header() -> None:
    bomb = encode(np.zeros((4_000, 5_000, 3), dtype=np.uint8), "PNG")  # 20 MP, ~60 kB
    assert len(bomb) < 200_000
    with pytest.raises(PhotoTooLarge, match="20,000,000 pixels"):
        inspect_photo(bomb, 10_000_000)


def test_the_exif_orientation_is_applied(detector: FaceDetector) -> None:
    upright = data.astronaut()
    stored = np.rot90(upright, k=1).copy()  # turned 90 degrees counter-clockwise on disk
    exif = PIL.Image.Exif()
    exif[EXIF_ORIENTATION] = ROTATE_90_CW
    photo = encode(stored, "JPEG", exif=exif.tobytes(), quality=95)
    assert detector.find(decode_photo(encode(stored, "JPEG", quality=95))) == []  # sideways
    decoded = decode_photo(photo)
    assert decoded.shape == upright.shape
    assert np.abs(decoded.astype(int) - upright.astype(int)).mean() < 8  # JPEG noise only
    assert len(detector.find(decoded)) == 1


def test_the_astronaut_is_framed_head_and_shoulders(detector: FaceDetector) -> None:
    image = decode_photo(encode(data.astronaut(), "PNG"))
    faces = detector.find(image)
    assert len(faces) == 1
    portrait = frame_portrait(image, faces, HEIGHT, WIDTH)
    assert portrait.picture.shape == (HEIGHT, WIDTH, 3) and portrait.faces == 1
    face = portrait.face
    assert abs(face.x + face.width / 2 - WIDTH / 2) < 0.05 * WIDTH  # centred
    assert abs(face.width / WIDTH - FACE_WIDTH_SHARE) < 0.05
    crop = portrait.crop
    assert crop.x >= 0 and crop.y >= 0
    assert crop.x + crop.width <= 512 and crop.y + crop.height <= 512
    assert abs(crop.height / crop.width - HEIGHT / WIDTH) < 0.01


def test_the_cat_has_no_face(detector: FaceDetector) -> None:
    image = decode_photo(encode(data.chelsea(), "JPEG"))
    with pytest.raises(PhotoRejected, match="no face was found") as rejected:
        frame_portrait(image, detector.find(image), HEIGHT, WIDTH)
    assert rejected.value.code == NO_FACE


def test_a_small_picture_is_refused_with_the_minimum_size(detector: FaceDetector) -> None:
    small = np.asarray(PIL.Image.fromarray(data.astronaut()).resize((300, 300)))
    faces = detector.find(small)
    assert len(faces) == 1
    minimum = f"{round(WIDTH / MAX_UPSCALE)}x{round(HEIGHT / MAX_UPSCALE)}"
    with pytest.raises(PhotoRejected, match=f"needs at least {minimum}") as rejected:
        frame_portrait(small, faces, HEIGHT, WIDTH)
    assert rejected.value.code == TOO_SMALL


def test_of_several_faces_the_largest_is_used(detector: FaceDetector) -> None:
    person = data.astronaut()
    smaller = np.asarray(PIL.Image.fromarray(person).resize((384, 384)))
    pair = np.full((512, 512 + 384, 3), 128, dtype=np.uint8)
    pair[:, :512] = person
    pair[:384, 512:] = smaller
    faces = detector.find(pair)
    assert len(faces) == 2 and faces[0].area > faces[1].area
    portrait = frame_portrait(pair, faces[::-1], HEIGHT, WIDTH)  # the order given is not used
    assert portrait.faces == 2
    assert portrait.crop.x < 512 - portrait.crop.width / 2  # around the larger, left face


def test_a_truncated_picture_is_unreadable() -> None:
    photo = encode(data.astronaut(), "PNG")
    inspect_photo(photo[: len(photo) // 2], MAX_PIXELS)  # the header is whole
    with pytest.raises(PhotoRejected, match="could not be decoded"):
        decode_photo(photo[: len(photo) // 2])

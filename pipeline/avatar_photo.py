"""Turning an uploaded photo into an avatar's picture: check, decode, find the face, frame it.

Owns:

- ``inspect_photo``: the format and size from the file's header alone, nothing decoded:
  JPEG, PNG or WebP (else ``UnsupportedPhoto``), at most ``max_pixels`` pixels (else
  ``PhotoTooLarge``: a decompression bomb is refused before it is decoded);
- ``decode_photo``: the whole picture as RGB with its EXIF orientation applied;
- ``FaceDetector``: frontal faces, largest first, found by OpenCV's Haar cascade
  (``haarcascade_frontalface_default.xml``), which ships inside the opencv-python-headless
  4.x wheel (``cv2.data``): nothing is downloaded at run time, it runs in tens of ms on one
  CPU core, off the GPU and the device thread;
- ``frame_portrait``: the crop around a face with the output's aspect (the face
  ``FACE_WIDTH_SHARE`` of the width, its centre ``FACE_CENTRE_Y`` down the height: head and
  shoulders), resized to the output size; a crop that would need enlarging more than
  ``MAX_UPSCALE`` times is refused (``PhotoRejected`` with ``TOO_SMALL``), as is a photo
  without a face (``NO_FACE``).

Knows nothing about engines, storage or HTTP; synchronous (the server runs it on a worker
thread).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import PIL.Image
import PIL.ImageOps

if TYPE_CHECKING:
    import cv2

PHOTO_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
"""Formats an avatar photo may have (PIL's names), and the file extension each is kept with."""

PHOTO_MEDIA_TYPES = ("image/jpeg", "image/png", "image/webp")
"""The same formats as media types (what the API says it takes)."""

FACE_WIDTH_SHARE = 0.4
"""The face's width as a share of the picture's width: a head-and-shoulders portrait."""

FACE_CENTRE_Y = 0.42
"""Where the face's centre sits, as a share of the picture's height from the top."""

MAX_UPSCALE = 2.0
"""The crop around the face may be enlarged at most this much to reach the output size; a
smaller crop would be a blur, so the photo is refused (``TOO_SMALL``)."""

DETECT_MAX_SIDE_PX = 1024
"""Faces are searched on a copy whose longer side is at most this (a 48 MP photo takes
seconds at full size; a face is far larger than the cascade's 24 px window anyway)."""

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
"""The face model: a file in ``cv2.data.haarcascades`` (inside the opencv-python-headless
wheel)."""

HAAR_SCALE_FACTOR = 1.1
"""Step between the cascade's search scales."""

HAAR_MIN_NEIGHBOURS = 5
"""Overlapping detections a face needs to count (fewer: more false faces)."""

HAAR_MIN_FACE_PX = 24
"""Smallest face searched for, in pixels of the detection copy (the cascade's window)."""

RESIZE_FILTER = PIL.Image.Resampling.LANCZOS
"""Filter of the crop's resize to the output size."""


class PhotoError(ValueError):
    """An uploaded photo cannot become an avatar; ``code`` names why, the message says what
    to do."""

    code = "bad_photo"


class UnsupportedPhoto(PhotoError):
    """Not a JPEG, PNG or WebP picture (or not a picture at all)."""

    code = "unsupported_image"


class PhotoTooLarge(PhotoError):
    """More pixels than the server decodes."""

    code = "too_many_pixels"


class PhotoRejected(PhotoError):
    """The decoded photo cannot be framed as an avatar (see the codes)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


UNREADABLE = "unreadable"
"""``PhotoRejected`` code: the header was fine, the picture data is not."""

NO_FACE = "no_face"
"""``PhotoRejected`` code: no face was found."""

TOO_SMALL = "too_small"
"""``PhotoRejected`` code: the face's crop is too small for the output size."""


@dataclass(frozen=True)
class PhotoInfo:
    """What a photo's header says."""

    format: str
    """PIL's format name: ``JPEG``, ``PNG`` or ``WEBP``."""

    width: int
    height: int

    @property
    def extension(self) -> str:
        return PHOTO_FORMATS[self.format]


@dataclass(frozen=True)
class Box:
    """A rectangle in pixels: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class Portrait:
    """A photo framed as an avatar picture."""

    picture: np.ndarray  # [H, W, 3] uint8 RGB, the output size
    crop: Box
    """The crop in the (oriented) photo's pixels."""

    face: Box
    """The face in the picture's pixels."""

    faces: int
    """Faces found in the photo (the largest was used)."""


def inspect_photo(data: bytes, max_pixels: int) -> PhotoInfo:
    """The format and size of ``data`` from its header; raises ``UnsupportedPhoto`` or
    ``PhotoTooLarge``. Decodes nothing."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(io.BytesIO(data), formats=tuple(PHOTO_FORMATS)) as image:
                info = PhotoInfo(str(image.format), image.width, image.height)
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise PhotoTooLarge(
            f"the picture has more than {max_pixels:,} pixels, the most this server takes; "
            "send a smaller picture"
        ) from None
    except (PIL.UnidentifiedImageError, OSError, ValueError):
        raise UnsupportedPhoto(
            "the file is not a JPEG, PNG or WebP picture; send a photo in one of these formats"
        ) from None
    if info.format not in PHOTO_FORMATS:  # pragma: no cover - formats= already limits it
        raise UnsupportedPhoto(f"{info.format} pictures are not taken; send JPEG, PNG or WebP")
    if info.width * info.height > max_pixels:
        raise PhotoTooLarge(
            f"the picture is {info.width}x{info.height} = {info.width * info.height:,} pixels, "
            f"more than the {max_pixels:,} this server takes; send a smaller picture"
        )
    return info


def decode_photo(data: bytes) -> np.ndarray:
    """The photo as RGB ``[H, W, 3]`` uint8, turned upright by its EXIF orientation.

    Call ``inspect_photo`` first (it bounds the size). Raises ``PhotoRejected``
    (``UNREADABLE``) when the picture data cannot be decoded."""
    try:
        with PIL.Image.open(io.BytesIO(data), formats=tuple(PHOTO_FORMATS)) as image:
            image.load()
            upright = PIL.ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"), dtype=np.uint8).copy()  # [H, W, 3]
    except (PIL.UnidentifiedImageError, OSError, ValueError) as exc:
        raise PhotoRejected(
            UNREADABLE,
            f"the picture could not be decoded ({exc}); upload an intact JPEG, PNG or WebP file",
        ) from None


class FaceDetector:
    """Frontal faces by OpenCV's Haar cascade (see the module docstring). Make one and reuse
    it (loading the cascade takes tens of ms); one thread at a time."""

    def __init__(self) -> None:
        import cv2
        import cv2.data

        # One thread: detection runs beside live sessions on a small host; it is fast enough.
        cv2.setNumThreads(1)
        path = cv2.data.haarcascades + HAAR_CASCADE
        self._cv2 = cv2
        self._cascade: cv2.CascadeClassifier = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise RuntimeError(
                f"OpenCV could not load its face model {path}; reinstall opencv-python-headless 4.x"
            )

    def find(self, image: np.ndarray) -> list[Box]:
        """Faces in ``image`` ([H, W, 3] uint8 RGB), in its pixels, largest first."""
        cv2 = self._cv2
        scale = min(1.0, DETECT_MAX_SIDE_PX / max(image.shape[:2]))
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)  # [H, W]
        if scale < 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            gray = cv2.resize(gray, size, interpolation=cv2.INTER_AREA)
        found = self._cascade.detectMultiScale(
            gray,
            scaleFactor=HAAR_SCALE_FACTOR,
            minNeighbors=HAAR_MIN_NEIGHBOURS,
            minSize=(HAAR_MIN_FACE_PX, HAAR_MIN_FACE_PX),
        )
        faces = [
            Box(round(x / scale), round(y / scale), round(w / scale), round(h / scale))
            for x, y, w, h in np.asarray(found, dtype=np.int64).reshape(-1, 4)
        ]
        return sorted(faces, key=lambda box: box.area, reverse=True)


def crop_box(face: Box, photo_height: int, photo_width: int, height: int, width: int) -> Box:
    """The crop of the output's aspect around ``face`` (see ``FACE_WIDTH_SHARE``,
    ``FACE_CENTRE_Y``), shrunk to fit the photo and moved inside it where needed."""
    crop_w = face.width / FACE_WIDTH_SHARE
    crop_h = crop_w * height / width
    fit = min(1.0, photo_width / crop_w, photo_height / crop_h)
    crop_w, crop_h = crop_w * fit, crop_h * fit
    left = face.x + face.width / 2 - crop_w / 2
    top = face.y + face.height / 2 - FACE_CENTRE_Y * crop_h
    left = min(max(left, 0.0), photo_width - crop_w)
    top = min(max(top, 0.0), photo_height - crop_h)
    return Box(
        round(left),
        round(top),
        min(photo_width - round(left), max(1, round(crop_w))),
        min(photo_height - round(top), max(1, round(crop_h))),
    )


def frame_portrait(image: np.ndarray, faces: list[Box], height: int, width: int) -> Portrait:
    """Crop ``image`` around the largest of ``faces`` and resize it to ``height`` x
    ``width``; raises ``PhotoRejected`` (``NO_FACE``, ``TOO_SMALL``)."""
    if not faces:
        raise PhotoRejected(
            NO_FACE,
            "no face was found in the picture; upload a well-lit photo of one person "
            "looking at the camera, with the whole face visible",
        )
    face = max(faces, key=lambda box: box.area)
    crop = crop_box(face, image.shape[0], image.shape[1], height, width)
    min_w, min_h = math.ceil(width / MAX_UPSCALE), math.ceil(height / MAX_UPSCALE)
    if crop.width < min_w or crop.height < min_h:
        raise PhotoRejected(
            TOO_SMALL,
            f"the picture is too small: the portrait around the face is {crop.width}x"
            f"{crop.height} pixels, and an avatar of {width}x{height} needs at least "
            f"{min_w}x{min_h}; upload a larger photo, or one where the face is bigger",
        )
    region = PIL.Image.fromarray(image).crop(
        (crop.x, crop.y, crop.x + crop.width, crop.y + crop.height)
    )
    picture = np.asarray(region.resize((width, height), RESIZE_FILTER), dtype=np.uint8).copy()
    scale_x, scale_y = width / crop.width, height / crop.height
    in_picture = Box(
        round((face.x - crop.x) * scale_x),
        round((face.y - crop.y) * scale_y),
        round(face.width * scale_x),
        round(face.height * scale_y),
    )
    return Portrait(picture=picture, crop=crop, face=in_picture, faces=len(faces))

"""Bytes → pixels, shared by training and serving; imports nothing else of cbmir.

* :mod:`models.imaging.decode` — the entry points: :func:`~models.imaging.decode.decode_image`
  (bytes) and :func:`~models.imaging.decode.read_image_file` (a path).
* :mod:`models.imaging.formats` — format sniffing by magic number, content types, which
  files of a folder are images, and :class:`~models.imaging.formats.DecodedImage`.
* :mod:`models.imaging.raster` — PNG, JPEG, TIFF and BMP through Pillow.
* :mod:`models.imaging.dicom` — DICOM through pydicom (imported only when a DICOM file is
  seen): :mod:`~models.imaging.dicom_read` reads the file and one frame, ``dicom`` makes
  the frame display pixels.
* :mod:`models.imaging.render` — an image back to PNG bytes.
* :mod:`models.imaging.errors` — why decoding failed, one line safe to show a client.

Deliberately empty: import the module you need, so importing one never loads the others
(pydicom stays unloaded in a process that never meets a DICOM file).
"""

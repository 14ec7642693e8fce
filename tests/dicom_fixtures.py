"""DICOM files for tests, written with pydicom (the shared data has none)."""
from __future__ import annotations

import pathlib

import numpy as np


def write_dicom(path: pathlib.Path, pixels: np.ndarray, *, photometric: str = "MONOCHROME2",
                bits_stored: int | None = None) -> None:
  """A single-frame grey Secondary Capture DICOM of uint8 or uint16 pixels."""
  import pydicom
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
  pixels = np.ascontiguousarray(pixels)
  bits = pixels.dtype.itemsize * 8
  stored = bits_stored or bits
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  ds = Dataset()
  ds.file_meta = meta
  ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
  ds.Rows, ds.Columns = pixels.shape
  ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
  ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, stored, stored - 1, 0
  ds.PixelData = pixels.tobytes()
  pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
  pydicom.dcmwrite(path, ds, enforce_file_format=True)

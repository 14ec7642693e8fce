"""Import pretrained PyTorch / Hugging Face weights into our parameter tree.

`convert(kind, src, config)` reads a source and maps it onto the model's parts
(ssacl_jax.models.ssacl.PARTS); `run` also writes a converted workdir, as
`python -m ssacl_jax.convert` does (its docstring: kinds, outputs, the mapping report).

  tensors.py        source tensors, converted leaves, the report, per-layer rules
  readers.py        .pth / safetensors / Flax msgpack files -> numpy under PyTorch names
  mae.py, gpt2.py, ssacl_release.py   one mapping per kind of source
  conversion.py     the conversion, checked against the model's parameters
  writing.py        converted parts -> a workdir at step 0
"""
from ssacl_jax.convert.conversion import KINDS, abstract_params, convert, convert_tensors, set_position_tables
from ssacl_jax.convert.tensors import ConversionError, Report, Tensors, flatten
from ssacl_jax.convert.writing import merge_into, run

__all__ = ["KINDS", "ConversionError", "Report", "Tensors", "abstract_params", "convert",
           "convert_tensors", "flatten", "merge_into", "run", "set_position_tables"]

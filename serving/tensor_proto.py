"""TensorProto <-> numpy for the gRPC API, bounded by what the request holds.

`tf.make_ndarray` and `tf.make_tensor_proto` cost ~10 us a tensor in Python (a stream
call has ten inputs and four outputs), and `make_ndarray` fills a shape from its last value
without a bound: a 17-byte proto of shape [2^27] made it allocate 512 MB. Here the common
layouts (`tensor_content` bytes; one typed value per element; a short value list filled out
to its shape, as `tf.make_tensor_proto(5, shape=[3])` writes it) decode directly, and a
shape is refused when it holds more elements than `max_elements`; anything rarer (half
precision, complex, resources) goes to TF's own functions, after the same bound.

Example:
    >>> proto = tf.make_tensor_proto(np.array([[1.0, 2.0]], np.float32))
    >>> to_array("state", proto, max_elements=1_000).tolist()
    [[1.0, 2.0]]
    >>> to_proto(np.array([b"a", b"b"], dtype=object)).string_val
    [b'a', b'b']
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from serving.rest_api import BadRequest

# DataType -> (numpy dtype, the TensorProto field that holds its values one by one).
_DIRECT = {
    types_pb2.DT_FLOAT: (np.dtype(np.float32), "float_val"),
    types_pb2.DT_DOUBLE: (np.dtype(np.float64), "double_val"),
    types_pb2.DT_INT32: (np.dtype(np.int32), "int_val"),
    types_pb2.DT_INT16: (np.dtype(np.int16), "int_val"),
    types_pb2.DT_INT8: (np.dtype(np.int8), "int_val"),
    types_pb2.DT_UINT8: (np.dtype(np.uint8), "int_val"),
    types_pb2.DT_INT64: (np.dtype(np.int64), "int64_val"),
    types_pb2.DT_BOOL: (np.dtype(np.bool_), "bool_val"),
}
_ENUMS = {dtype: enum for enum, (dtype, _) in _DIRECT.items()}


def to_array(name: str, proto: tensor_pb2.TensorProto, max_elements: int) -> np.ndarray:
    """One request input's TensorProto -> its array (strings: an object array of bytes).

    Raises BadRequest naming the input when the shape is unknown or negative, holds more
    than `max_elements` values, or disagrees with the bytes or values sent.
    """
    shape = _shape(name, proto.tensor_shape)
    count = math.prod(shape)
    if count > max_elements:
        raise BadRequest(f"input {name!r} has shape {shape} ({count:,} values); a request may hold at most "
                         f"{max_elements:,} values an input (serve.max_request_bytes): send fewer or shorter rows")
    if proto.dtype == types_pb2.DT_STRING:
        return _filled(name, list(proto.string_val), shape, count, object)
    if proto.dtype not in _DIRECT:
        return tf.make_ndarray(proto)
    dtype, field = _DIRECT[proto.dtype]
    if proto.tensor_content:
        if len(proto.tensor_content) != count * dtype.itemsize:
            raise BadRequest(f"input {name!r}: tensor_content holds {len(proto.tensor_content)} bytes, but shape "
                             f"{shape} of {dtype.name} needs {count * dtype.itemsize}")
        return np.frombuffer(proto.tensor_content, dtype=dtype).reshape(shape).copy()
    return _filled(name, getattr(proto, field), shape, count, dtype)


def to_proto(value: np.ndarray) -> tensor_pb2.TensorProto:
    """An output array -> its TensorProto, field for field as `tf.make_tensor_proto` writes
    it: more than one number as `tensor_content`; one number, booleans and strings in their
    typed value fields."""
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d)
                                                   for d in value.shape])
    if value.dtype == object:
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape)
        try:
            proto.string_val.extend(value.ravel().tolist())
        except TypeError:  # str, not bytes: TF's function encodes it
            return tf.make_tensor_proto(value)
        return proto
    enum = _ENUMS.get(value.dtype)
    if enum is None:
        return tf.make_tensor_proto(value)
    if value.size > 1 and enum != types_pb2.DT_BOOL:
        return tensor_pb2.TensorProto(dtype=enum, tensor_shape=shape,
                                      tensor_content=np.ascontiguousarray(value).tobytes())
    proto = tensor_pb2.TensorProto(dtype=enum, tensor_shape=shape)
    getattr(proto, _DIRECT[enum][1]).extend(value.ravel().tolist())
    return proto


def _shape(name: str, proto: tensor_shape_pb2.TensorShapeProto) -> list[int]:
    shape = [dim.size for dim in proto.dim]
    if proto.unknown_rank or any(d < 0 for d in shape):
        raise BadRequest(f"input {name!r} must have a known shape with no negative sizes, got {shape}")
    return shape


def _filled(name: str, values, shape: list[int], count: int, dtype) -> np.ndarray:
    """One value per element, or fewer filled out with the last (TensorProto's meaning);
    none at all is zeros (empty strings: b"", where `tf.make_ndarray` gives "")."""
    if len(values) > count:
        raise BadRequest(f"input {name!r} sends {len(values)} values for shape {shape} ({count} values)")
    try:
        if len(values) == count:  # the common case, in one call
            return np.array(values, dtype=dtype).reshape(shape)
        array = np.empty(count, dtype=dtype)
        array[:len(values)] = list(values)
        array[len(values):] = values[-1] if values else (b"" if dtype is object else 0)
    except OverflowError:
        raise BadRequest(f"input {name!r} holds a value out of range for {np.dtype(dtype).name}") from None
    return array.reshape(shape)

"""TensorProto <-> numpy for the gRPC API: the same arrays as TF's own functions, in every
layout a TF Serving client sends, and no shape larger than the request allows."""

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.rest_api import BadRequest
from serving.tensor_proto import to_array, to_proto

ARRAYS = [
    np.array([[1.5, -2.0, 3.25]], np.float32),
    np.array([1, -7, 2**31 - 1], np.int32),
    np.array([2**40, -1], np.int64),
    np.array([0.1, 1e300], np.float64),
    np.array([True, False, True]),
    np.array([b"the cat", "é".encode(), b""], dtype=object),
    np.zeros((0, 5), np.float32),
    np.array(7, np.int32),
]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{list(a.shape)}")
def test_round_trips_equal_tf_make_ndarray_and_make_tensor_proto(array):
    proto = to_proto(array)
    assert proto == tf.make_tensor_proto(array)
    for sent in (proto, tf.make_tensor_proto(array.tolist() if array.dtype != object else list(array.ravel()),
                                             dtype=tf.as_dtype(proto.dtype), shape=array.shape)):
        got, want = to_array("x", sent, max_elements=100), tf.make_ndarray(sent)
        assert got.dtype == want.dtype and got.shape == want.shape and got.tolist() == want.tolist()


def test_short_value_lists_fill_their_shape_as_tf_does():
    for proto in (tf.make_tensor_proto(5, shape=[3]), tf.make_tensor_proto([1.0, 2.0], shape=[2, 2]),
                  tf.make_tensor_proto("a", shape=[2]),
                  tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_shape={"dim": [{"size": 3}]})):
        got, want = to_array("x", proto, max_elements=100), tf.make_ndarray(proto)
        assert got.dtype == want.dtype and got.tolist() == want.tolist(), proto
    assert to_array("x", tf.make_tensor_proto(5, shape=[3]), 100).tolist() == [5, 5, 5]
    no_strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape={"dim": [{"size": 2}]})
    assert to_array("x", no_strings, 100).tolist() == [b"", b""]  # make_ndarray: ["", ""]


def _proto(dtype, sizes, **values):
    return tensor_pb2.TensorProto(dtype=dtype, tensor_shape={"dim": [{"size": s} for s in sizes]}, **values)


@pytest.mark.parametrize("proto, message", [
    (_proto(types_pb2.DT_STRING, [2**40], string_val=[b"the"]),
     "input 'x' has shape [1099511627776] (1,099,511,627,776 values); a request may hold at most 1,000 values"),
    (_proto(types_pb2.DT_FLOAT, [40, 40], float_val=[1.0]), "input 'x' has shape [40, 40] (1,600 values)"),
    (_proto(types_pb2.DT_FLOAT, [3], tensor_content=b"\0" * 8),
     "input 'x': tensor_content holds 8 bytes, but shape [3] of float32 needs 12"),
    (_proto(types_pb2.DT_INT32, [2], int_val=[1, 2, 3]), "input 'x' sends 3 values for shape [2] (2 values)"),
    (_proto(types_pb2.DT_INT32, [-1], int_val=[1]), "input 'x' must have a known shape with no negative sizes"),
    (tensor_pb2.TensorProto(dtype=types_pb2.DT_INT32, tensor_shape={"unknown_rank": True}),
     "input 'x' must have a known shape"),
])
def test_refuses_shapes_over_the_bound_or_unlike_the_values_sent(proto, message):
    with pytest.raises(BadRequest) as err:
        to_array("x", proto, max_elements=1_000)
    assert str(err.value).startswith(message), str(err.value)

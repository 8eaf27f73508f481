"""`tf.train.Example` records written without loading TensorFlow's runtime (for the Beam engine's workers).

`import tensorflow` costs a process ~690 MB (measured: 828 MB RSS with cv2, requests and Beam, against
137 MB without), for the two things a shard writer needs of it: the Example message and the TFRecord
framing. Here the message is TensorFlow's own: the schema is read from the `feature_pb2.py` /
`example_pb2.py` that TensorFlow's wheel ships (parsed, not executed: executing them imports all of
TensorFlow) into a private protobuf pool, so the bytes are those of `tf.train.Example` (tested); the framing
is Apache Beam's own TFRecord writer's (`apache_beam.io.tfrecordio`, CRC32C through google-crc32c).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Any, BinaryIO

SCHEMA_FILES = ("core/example/feature_pb2.py", "core/example/example_pb2.py")


class Unavailable(Exception):
    """TensorFlow's generated schema or Beam's framing cannot be had here: use TensorFlow itself."""


def _serialized_schema(path: Path) -> bytes:
    """The `AddSerializedFile(b'...')` argument of a protoc-generated module, without running it."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return ast.literal_eval(node.args[0])
    raise Unavailable(f"{path}: no serialized schema in it")


@functools.cache
def example_class() -> type:
    """TensorFlow's `Example` message class, from its wheel's schema (no TensorFlow import)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    spec = importlib.util.find_spec("tensorflow")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise Unavailable("tensorflow is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    pool = descriptor_pool.DescriptorPool()  # private: TensorFlow, if imported later, fills the default one
    try:
        for name in SCHEMA_FILES:
            pool.Add(descriptor_pb2.FileDescriptorProto.FromString(_serialized_schema(root / name)))
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError) as e:
        raise Unavailable(f"TensorFlow's Example schema could not be read ({type(e).__name__}: {e})") from None


class RecordWriter:
    """TFRecord framing (length, masked CRC32C of it, data, masked CRC32C of the data): Beam's writer's."""

    def __init__(self, path: str):
        try:
            from apache_beam.io.tfrecordio import _TFRecordUtil
        except ImportError as e:
            raise Unavailable(f"apache_beam.io.tfrecordio: {e}") from None
        self._write = _TFRecordUtil.write_record
        self._file: BinaryIO = open(path, "wb")  # noqa: SIM115 (closed by close(), as tf.io.TFRecordWriter)

    def write(self, record: bytes) -> None:
        self._write(self._file, record)

    def close(self) -> None:
        self._file.close()


def example_type(lite: bool) -> Any:
    """`tf.train.Example`, or the same message without TensorFlow when `lite` (falling back to TensorFlow)."""
    if lite:
        try:
            return example_class()
        except Unavailable:
            pass
    import tensorflow as tf

    return tf.train.Example

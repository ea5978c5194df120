"""The Open Inference Protocol (KServe v2 REST) spoken by ``aftzoo serve``: schemas, the binary
tensor codec, request parsing and response building. No HTTP framework here: routes call these.

Two input forms per model, both in its metadata:

- ``input``: BYTES ``[N]`` (or ``[N, 1]``): raw texts, or encoded image files (base64 strings in
  JSON, raw bytes as binary tensor data);
- image models also take ``pixel_values``: FP32 ``[N, 3, S, S]``, images already preprocessed as
  the export's ``preprocess.json`` says (resized to S, ``pixel / 255``, minus mean, over std),
  checked for shape, datatype and finiteness.
"""
from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, Field

from storage.errors import AftzooError

DEFAULT_TOP_K = 5
INPUT_NAME = "input"
TENSOR_INPUT = "pixel_values"
OUTPUTS = ("probabilities", "logits", "labels", "scores")
VERSION = "1"


class ServeError(AftzooError):
    """A request the server refuses: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def bad(message: str) -> ServeError:
    return ServeError(400, message)


# ---------------------------------------------------------------------------------------------
# Schemas (documentation in /openapi.json; requests are parsed by hand for exact 4xx messages)
# ---------------------------------------------------------------------------------------------
class ErrorResponse(BaseModel):
    error: str


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: Optional[dict[str, Any]] = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]
    parameters: Optional[dict[str, Any]] = None


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class InferInputTensor(BaseModel):
    name: str = Field(description="'input' (BYTES), or 'pixel_values' (FP32, image models)")
    shape: list[int] = Field(description="[N] (or [N, 1]): N texts or images; [N, 3, S, S] for pixel_values")
    datatype: str = Field(description="BYTES, or FP32 for pixel_values")
    parameters: Optional[dict[str, Any]] = Field(None, description="binary_data_size with the binary extension")
    data: Optional[list[Any]] = Field(None, description="texts, base64-encoded images (PNG, JPEG, ...), or numbers")


class InferRequestedOutput(BaseModel):
    name: str = Field(description="probabilities, logits, labels or scores")
    parameters: Optional[dict[str, Any]] = Field(
        None, description="binary_data (bool), classification (int: Triton's 'score:index:label' strings), top_k")


class InferRequest(BaseModel):
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = Field(None, description="top_k (int), binary_data_output (bool)")
    inputs: list[InferInputTensor]
    outputs: Optional[list[InferRequestedOutput]] = None


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[dict[str, Any]] = None
    data: Optional[list[Any]] = None


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    outputs: list[InferOutputTensor]


class PredictRequest(BaseModel):
    texts: Optional[list[Union[str, dict[str, str]]]] = Field(
        None, description="texts, for a text model (objects naming the fields of a prompt with several)")
    images: Optional[list[str]] = Field(None, description="base64-encoded image files, for an image model")
    top_k: Optional[int] = Field(None, description=f"labels per input (default {DEFAULT_TOP_K})")


class Prediction(BaseModel):
    label: str
    index: int
    probability: float


class PredictResponse(BaseModel):
    model: str
    provider: str
    predictions: list[list[Prediction]]


class ModelInfo(BaseModel):
    name: str
    modality: str
    classes: list[str]
    run_id: Optional[str] = None
    dataset: Optional[str] = None
    student: Optional[str] = None
    quantize: Optional[str] = None
    opset: Optional[int] = None
    provider: str


class ModelList(BaseModel):
    models: list[ModelInfo]


# ---------------------------------------------------------------------------------------------
# Parsing helpers and the binary codec
# ---------------------------------------------------------------------------------------------
def parse_json(raw: bytes) -> Any:
    if not raw:
        raise bad("the request has no body; send a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise bad("the request body is not UTF-8 JSON") from None
    except ValueError as exc:
        raise bad(f"malformed JSON: {exc}") from None
    except RecursionError:  # "[[[[...": Python's parser recurses once per level
        raise bad("the JSON nests too deeply; send a flat list of inputs") from None


def top_k(value: Any, num_classes: int, where: str = "top_k") -> int:
    if value is None:
        return min(DEFAULT_TOP_K, num_classes)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and (
            not math.isfinite(value) or value != int(value))):
        raise bad(f"{where} must be a whole number; got {value!r}")
    if int(value) < 1:
        raise bad(f"{where} must be at least 1; got {value!r}")
    return min(int(value), num_classes)


def flatten(data: Any) -> list:
    """Nested lists -> their elements in order; a loop, not recursion, so no depth can crash it."""
    out: list = []
    stack = [iter([data])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def deserialize_bytes(buffer: bytes) -> list[bytes]:
    """The binary form of a BYTES tensor: each element a 4-byte little-endian length, then its bytes."""
    items, offset = [], 0
    while offset < len(buffer):
        if offset + 4 > len(buffer):
            raise bad("binary BYTES data ends inside an element's length prefix")
        (n,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + n > len(buffer):
            raise bad("binary BYTES data ends inside an element")
        items.append(buffer[offset:offset + n])
        offset += n
    return items


def serialize_bytes(items: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def split_binary(raw: bytes, header: str | None) -> tuple[bytes, bytes]:
    """The JSON part and the binary tensor data of a body (``Inference-Header-Content-Length``)."""
    if header is None:
        return raw, b""
    if not header.isdigit() or int(header) > len(raw):
        raise bad(f"Inference-Header-Content-Length {header!r} does not fit a body of {len(raw)} bytes")
    return raw[:int(header)], raw[int(header):]


def _check_count(n: int, max_batch: int) -> None:
    if n < 1:
        raise bad("no inputs given: send at least one text or image")
    if n > max_batch:
        raise bad(f"{n} inputs in one request; the limit is {max_batch}")


def _shape(tensor: dict) -> list[int]:
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise bad("input 'shape' must be a list of non-negative integers, e.g. [N]")
    return shape


def _binary_size(tensor: dict, binary: bytes) -> int | None:
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad("input 'parameters' must be an object")
    if "binary_data_size" not in params:
        return None
    size = params["binary_data_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0 or size > len(binary):
        raise bad(f"binary_data_size {size!r} does not fit the {len(binary)} bytes after the JSON header")
    return size


def read_bytes_tensor(tensor: dict, binary: bytes, max_batch: int, what: str) -> tuple[list, bool]:
    """A BYTES ``input`` -> (its elements, whether they came as binary data)."""
    if tensor.get("datatype") != "BYTES":
        raise bad(f"input {INPUT_NAME!r} has datatype {tensor.get('datatype')!r}; it must be BYTES ({what})")
    shape = _shape(tensor)
    count = math.prod(shape)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise bad(f"input shape {shape} is not [N] or [N, 1]")
    _check_count(count, max_batch)
    size = _binary_size(tensor, binary)
    if size is not None:
        items: list = deserialize_bytes(binary[:size])
    elif "data" not in tensor:
        raise bad(f"input {INPUT_NAME!r} has no 'data' (and no binary_data_size)")
    else:
        items = flatten(tensor["data"])
    if len(items) != count:
        raise bad(f"input shape {shape} says {count} elements; the data has {len(items)}")
    return items, size is not None


def read_fp32_tensor(tensor: dict, binary: bytes, max_batch: int, image_size: int) -> np.ndarray:
    """An FP32 ``pixel_values`` ``[N, 3, S, S]`` -> a float32 array, checked for shape, datatype and finiteness."""
    want = f"[N, 3, {image_size}, {image_size}]"
    if tensor.get("datatype") != "FP32":
        raise bad(f"input {TENSOR_INPUT!r} has datatype {tensor.get('datatype')!r}; it must be FP32 {want}")
    shape = _shape(tensor)
    if len(shape) != 4 or shape[1:] != [3, image_size, image_size]:
        raise bad(f"input {TENSOR_INPUT!r} has shape {shape}; this model takes {want} (preprocessed images)")
    _check_count(shape[0], max_batch)
    count = math.prod(shape)
    size = _binary_size(tensor, binary)
    if size is not None:
        if size != 4 * count:
            raise bad(f"binary_data_size {size} is not 4 bytes x {count} elements of shape {shape}")
        values = np.frombuffer(binary[:size], dtype="<f4").astype(np.float32)
    elif "data" not in tensor:
        raise bad(f"input {TENSOR_INPUT!r} has no 'data' (and no binary_data_size)")
    else:
        items = flatten(tensor["data"])
        if len(items) != count:
            raise bad(f"input shape {shape} says {count} elements; the data has {len(items)}")
        for i, v in enumerate(items):
            if type(v) not in (float, int):
                raise bad(f"element {i} of {TENSOR_INPUT!r} is {type(v).__name__} {str(v)[:40]!r}; FP32 data must "
                          "be numbers")
        values = np.asarray(items, dtype=np.float32)
    if not np.isfinite(values).all():
        i = int(np.flatnonzero(~np.isfinite(values))[0])
        raise bad(f"element {i} of {TENSOR_INPUT!r} is {values[i]} (or beyond float32); the pixels must be finite")
    return values.reshape(shape)


# ---------------------------------------------------------------------------------------------
# Responses
# ---------------------------------------------------------------------------------------------
@dataclass
class Wanted:
    """The outputs a request asks for, and in which form."""
    outputs: list[tuple[str, dict]]
    k_default: int
    binary: bool


def requested_outputs(body: dict, params: dict, num_classes: int, model: str) -> Wanted:
    requested = body.get("outputs")
    k_default = top_k(params.get("top_k"), num_classes, "parameters.top_k")
    if requested is None:
        return Wanted([(n, {}) for n in OUTPUTS], k_default, bool(params.get("binary_data_output", False)))
    if not isinstance(requested, list):
        raise bad("'outputs' must be a list of {name, parameters}")
    wanted = []
    for out in requested:
        if not isinstance(out, dict) or out.get("name") not in OUTPUTS:
            got = out.get("name") if isinstance(out, dict) else out
            raise bad(f"unknown output {got!r}; model {model!r} has {', '.join(OUTPUTS)}")
        oparams = out.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise bad("output 'parameters' must be an object")
        wanted.append((out["name"], oparams))
    return Wanted(wanted, k_default, bool(params.get("binary_data_output", False)))


def _output(name: str, oparams: dict, logits: np.ndarray, probs: np.ndarray, classes: list[str], k: int):
    """One output's (values, datatype, shape)."""
    classification = oparams.get("classification")
    if classification is not None:
        kc = top_k(classification, len(classes), f"{name}.classification")
        source = logits if name == "logits" else probs
        idx = np.argsort(-source, axis=-1, kind="stable")[:, :kc]
        vals = np.take_along_axis(source, idx, axis=-1)
        values = [[f"{v:f}:{j}:{classes[j]}" for v, j in zip(rv, ri)] for rv, ri in zip(vals, idx)]
        return values, "BYTES", [len(values), kc]
    if name in ("probabilities", "logits"):
        values = (probs if name == "probabilities" else logits).astype(np.float32)
        return values, "FP32", list(values.shape)
    idx = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    if name == "labels":
        return [[classes[j] for j in row] for row in idx], "BYTES", [len(idx), idx.shape[1]]
    return np.take_along_axis(probs, idx, axis=-1).astype(np.float32), "FP32", [len(idx), idx.shape[1]]


def infer_response(model: str, logits: np.ndarray, probs: np.ndarray, classes: list[str], wanted: Wanted,
                   request_id: Any = None) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensor data follows it."""
    outputs, buffers = [], []
    for name, oparams in wanted.outputs:
        k = top_k(oparams["top_k"], len(classes), f"{name}.top_k") if "top_k" in oparams else wanted.k_default
        values, datatype, shape = _output(name, oparams, logits, probs, classes, k)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": shape}
        if bool(oparams.get("binary_data", wanted.binary)):
            if datatype == "BYTES":
                blob = serialize_bytes([s.encode("utf-8") for row in values for s in row])
            else:
                blob = np.ascontiguousarray(values, dtype="<f4").tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            buffers.append(blob)
        else:
            entry["data"] = (np.asarray(values).reshape(-1).tolist() if datatype == "FP32"
                             else [s for row in values for s in row])
        outputs.append(entry)
    result: dict[str, Any] = {"model_name": model, "model_version": VERSION, "outputs": outputs}
    if request_id is not None:
        result["id"] = str(request_id)
    text = json.dumps(result, separators=(",", ":")).encode()
    return (text + b"".join(buffers), len(text)) if buffers else (text, None)

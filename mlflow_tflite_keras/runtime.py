"""Run a ``.tflite`` model on the LiteRT interpreter with pyfunc semantics.

Batching, quantized I/O, multi-signature selection, stateful models and thread safety live
here, so the pyfunc, the Keras ``TFLiteLayer`` and parity checks all run models one way.
No TensorFlow import: this module is on the serving path.
"""

from __future__ import annotations

import mmap
import os
import threading
import time
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

from mlflow_tflite_keras import tflite_model as _tm
from mlflow_tflite_keras.tflite_model import Quantization, TFLiteModel, has_batch_dimension

__all__ = ["RuntimeModel", "SignatureSpec", "TFLiteRunner", "TensorSpec"]


# Large batches run in chunks whose inputs take at most this many bytes, so memory (inputs,
# interpreter arena, outputs of one invoke) stays bounded whatever the request size.
DEFAULT_MAX_BATCH_BYTES = 64 * 2 ** 20
# Interpreters left unused this long are released (the most recent one stays warm).
DEFAULT_IDLE_SECONDS = 60.0


def _bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


@dataclass(frozen=True)
class TensorSpec:
    """One signature input or output as the runner sees it."""

    name: str
    index: int  # tensor index within the signature's subgraph
    dtype: np.dtype
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    quantization: Quantization | None

    @property
    def quantized(self) -> bool:
        return self.quantization is not None and np.issubdtype(self.dtype, np.integer)

    @property
    def logical_dtype(self) -> np.dtype:
        """What a caller sees: float32 for quantized tensors, the tensor's dtype otherwise."""
        return np.dtype(np.float32) if self.quantized else self.dtype

    def quantize(self, values: np.ndarray) -> np.ndarray:
        if not np.all(np.isfinite(values)):
            raise _bad_input(f"Input '{self.name}' has NaN or infinite values; it is quantized "
                             f"to {self.dtype.name} and cannot represent them.")
        return self.quantization.quantize(values, self.dtype)

    def dequantize(self, values: np.ndarray) -> np.ndarray:
        # float32 arithmetic, as LiteRT users compute it: results match the raw interpreter's.
        return self.quantization.dequantize(values, arithmetic=np.float32)


class SignatureSpec:
    """The inputs and outputs of one signature key, and how the batch dimension behaves."""

    def __init__(self, model: TFLiteModel, signature_key: str | None):
        sig = model.signature(signature_key)
        self.key = sig.key
        self.subgraph_index = sig.subgraph_index
        tensors = model.subgraphs[sig.subgraph_index].tensors

        def spec(name, index):
            t = tensors[index]
            if t.type_name == "STRING":  # exchanged as object arrays of bytes
                return TensorSpec(name, index, np.dtype(object), t.shape, t.shape_signature,
                                  None)
            if t.dtype is None:
                raise _bad_input(
                    f"Tensor '{name}' has type {t.type_name}, which the pyfunc cannot exchange "
                    "as a numpy array."
                )
            return TensorSpec(name, index, np.dtype(t.dtype), t.shape, t.shape_signature,
                              t.quantization)

        self.inputs = [spec(n, i) for n, i in sig.inputs.items()]
        self.outputs = [spec(n, i) for n, i in sig.outputs.items()]
        self.stateful = model.is_stateful
        # Sequence ops keep their running state in variable tensors that survive an invoke;
        # every row (or batch) is a new sequence, so they start from their initial zeros.
        self.reset_variables = model.has_variable_tensors and not model.is_stateful
        self.batched = has_batch_dimension(self.inputs)
        self.resizable_batch = self.batched and all(s.shape_signature[0] == -1 for s in self.inputs)
        self._precompute()

    def _precompute(self):
        """Facts every call would otherwise recompute: the fast path's accepted input and
        whether outputs need dequantizing or decoding."""
        self.output_names = [o.name for o in self.outputs]
        self.input_indices = [s.index for s in self.inputs]
        self.output_indices = [o.index for o in self.outputs]
        self.quantized_outputs = any(o.quantized for o in self.outputs)
        self.string_outputs = any(o.dtype == object for o in self.outputs)
        # One numeric input of fully known row shape: an ndarray of exactly its dtype and
        # shape needs no conversion and no check beyond dtype, shape and layout.
        self.fast_input = None
        if len(self.inputs) == 1 and self.inputs[0].dtype != object:
            s = self.inputs[0]
            expected = (-1, *s.shape_signature[1:]) if self.batched else s.shape_signature
            if all(d >= 0 for d in expected[1 if self.batched else 0:]):
                self.fast_input = (s.dtype, len(expected), tuple(expected[1:]) if self.batched
                                   else tuple(expected))


class RuntimeModel:
    """What the runner needs of a ``.tflite`` that was validated when it was saved (a
    :class:`TFLiteModel` is refused there if malformed): its signatures' input and output
    tensors, whether it is stateful or has variable tensors, whether LiteRT runs it right.

    Read lazily from the flatbuffer, touching only the tables asked for, instead of unpacking
    the whole file in Python (most of a load's time on a large model). Anything unexpected
    (or a finding of :attr:`TFLiteModel.litert_unsupported`) defers to a full
    :class:`TFLiteModel`, which names the problem.
    """

    def __init__(self, model_bytes: bytes | None = None, path: str | None = None,
                 stateful: bool | None = None):
        # From a file: memory-mapped, here and in LiteRT (which maps the file itself), so
        # nothing is read that is not used.
        self.model_path = path
        if model_bytes is None:
            with open(path, "rb") as f:
                buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if \
                    os.fstat(f.fileno()).st_size else b""
            # The mapping outlives the file: a model loaded into a temporary directory
            # still answers after the directory is gone.
            self._mapped = buffer
        else:
            self.model_bytes = buffer = model_bytes
        self._recorded_stateful = stateful
        self._full: TFLiteModel | None = None
        try:
            _tm._check_header(buffer)
            self._root = _tm.schema.Model.GetRootAs(buffer, 0)
            self.signatures = self._read_signatures()
            self.main = _LazySubgraph(self._root.Subgraphs(0), 0)
            self.subgraphs = _LazySubgraphs(self._root)
        except Exception:  # malformed: the full parse says how
            self._use_full()

    @cached_property
    def model_bytes(self) -> bytes:  # only when a path was given (else an attribute)
        return bytes(self._mapped)

    def _use_full(self):
        if self._full is None:
            self._full = TFLiteModel(self.model_bytes)
            for name in ("signatures", "main", "subgraphs"):
                setattr(self, name, getattr(self._full, name))
        return self._full

    def _read_signatures(self) -> list:
        root, signatures = self._root, []
        for i in range(root.SignatureDefsLength()):
            sd = root.SignatureDefs(i)
            maps = [{_tm._text(m.Name()): int(m.TensorIndex()) for m in
                     (get(j) for j in range(length()))}
                    for get, length in ((sd.Inputs, sd.InputsLength),
                                        (sd.Outputs, sd.OutputsLength))]
            signatures.append(_tm.SignatureInfo(_tm._text(sd.SignatureKey()),
                                                int(sd.SubgraphIndex()), *maps))
        return signatures

    signature = TFLiteModel.signature

    @property
    def is_stateful(self) -> bool:
        if self._recorded_stateful is not None:
            return bool(self._recorded_stateful)
        return self._scan[0]

    @property
    def has_variable_tensors(self) -> bool:
        return self._scan[1]

    @property
    def has_custom_ops(self) -> bool:
        return self._scan[3]

    def check_litert_support(self):
        if self._full is not None or self._scan[2]:
            self._use_full().check_litert_support()

    @cached_property
    def _scan(self) -> tuple[bool, bool, bool, bool]:
        """(stateful, has variable tensors, maybe unsupported by LiteRT, has custom ops) in one
        pass over the tensors and operators; a suspicion is confirmed by the full model."""
        if self._full is not None:
            full = self._full
            return (full.is_stateful, full.has_variable_tensors, bool(full.litert_unsupported),
                    full.has_custom_ops)
        try:
            return self._scan_flatbuffer()
        except Exception:
            self._use_full()
            return self._scan

    def _scan_flatbuffer(self) -> tuple[bool, bool, bool, bool]:
        schema, root = _tm.schema, self._root
        codes = []
        for i in range(root.OperatorCodesLength()):
            code = root.OperatorCodes(i)
            codes.append(_tm.builtin_name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())))
        stateful = bool(set(codes) & _tm._STATEFUL_OPS)
        variable = suspicious = False
        resource, int2 = schema.TensorType.RESOURCE, schema.TensorType.INT2
        for g in range(root.SubgraphsLength()):
            sg = root.Subgraphs(g)
            # Operator codes and input/output counts: LiteRT's kernels trust them (a missing
            # input is a null pointer), and a file replaced since it was validated at save
            # time may break them. A suspicion is confirmed (and named) by the full model.
            for o in range(sg.OperatorsLength()):
                op = sg.Operators(o)
                index = op.OpcodeIndex()
                arity = _tm._ARITY.get(codes[index]) if 0 <= index < len(codes) else ()
                suspicious = suspicious or arity == () or arity is not None and not (
                    _within(op.InputsLength(), *arity[:2])
                    and _within(op.OutputsLength(), *arity[2:]))
            for t in range(sg.TensorsLength()):
                tensor = sg.Tensors(t)
                stateful = stateful or tensor.Type() == resource
                variable = variable or tensor.IsVariable()
                q = tensor.Quantization()
                # Multi-axis or blockwise parameters, INT2 tensors: what litert_unsupported
                # looks at; the full model decides.
                suspicious = suspicious or tensor.Type() == int2 or (
                    q is not None and q.DetailsType() != schema.QuantizationDetails.NONE)
        return stateful, bool(variable), suspicious, "CUSTOM" in codes


def _within(count: int, low: int, high: int | None) -> bool:
    return count >= low and (high is None or count <= high)


class _LazySubgraphs:
    def __init__(self, root):
        self._root = root

    def __getitem__(self, index: int):
        if not 0 <= index < self._root.SubgraphsLength():
            raise IndexError(index)
        return _LazySubgraph(self._root.Subgraphs(index), index)


class _LazySubgraph:
    """A subgraph's inputs, outputs and (built when asked) tensors."""

    def __init__(self, sg, index: int):
        self.index = index
        self.inputs = [int(i) for i in sg.InputsAsNumpy()] if sg.InputsLength() else []
        self.outputs = [int(i) for i in sg.OutputsAsNumpy()] if sg.OutputsLength() else []
        self.tensors = _LazyTensors(sg)


class _LazyTensors:
    def __init__(self, sg):
        self._sg = sg

    def __getitem__(self, index: int) -> "_tm.TensorInfo":
        if not 0 <= index < self._sg.TensorsLength():
            raise IndexError(index)
        t = self._sg.Tensors(index)
        shape = tuple(int(d) for d in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        signature = (tuple(int(d) for d in t.ShapeSignatureAsNumpy())
                     if t.ShapeSignatureLength() else ()) or shape
        q = t.Quantization()
        if q is not None and q.DetailsType() != _tm.schema.QuantizationDetails.NONE:
            raise ValueError("quantization details: read by the full model")
        q = _tm.schema.QuantizationParametersT.InitFromObj(q) if q is not None else None
        return _tm.TensorInfo(index=index, name=_tm._text(t.Name()) or f"tensor_{index}",
                              type_name=_tm.tensor_type_name(t.Type()), shape=shape,
                              shape_signature=signature, buffer=int(t.Buffer()),
                              quantization=_tm._quantization(q, shape, index),
                              is_variable=bool(t.IsVariable()), sparsity=None)


class TFLiteRunner:
    """Thread-safe predictions on a bounded pool of LiteRT interpreters.

    Each call borrows an interpreter from the pool (creating one when none is free), so
    concurrent calls never share interpreter state. At most ``max_interpreters`` (default: the
    number of cores) exist at once: more concurrent calls wait for one, since each invoke
    already uses every core; interpreters idle for ``idle_seconds`` are released (the most
    recently used one stays). Stateful models get a fresh interpreter per call (counted in the
    bound): each call starts from the initial state and feeds its rows in order.

    A batch bigger than ``max_batch_rows`` rows (default: as many rows as fit in
    ``max_batch_bytes`` of input, 64 MiB) runs as several invokes of at most that many rows;
    the results are concatenated, equal to one big invoke.
    """

    def __init__(self, model: TFLiteModel, num_threads: int | None = None,
                 max_batch_rows: int | None = None,
                 max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
                 max_interpreters: int | None = None,
                 idle_seconds: float = DEFAULT_IDLE_SECONDS):
        self.model = model
        # Like TensorFlow, use every core unless told otherwise (LiteRT's own default is one
        # thread, which halves batch throughput on a 2-core machine).
        self.num_threads = num_threads or os.cpu_count() or 1
        self.max_batch_rows = _positive_or_none(max_batch_rows, "max_batch_rows")
        self.max_batch_bytes = _positive_or_none(max_batch_bytes, "max_batch_bytes")
        self.max_interpreters = _positive_or_none(max_interpreters, "max_interpreters") or \
            os.cpu_count() or 1
        self.idle_seconds = float(idle_seconds)
        self._specs: dict[str | None, SignatureSpec] = {}
        # The pool: idle sessions, newest last. Borrowing and giving back are single list
        # operations (atomic), with no lock; the lock guards creating, waiting and releasing.
        self._idle: list[tuple[float, _Session]] = []  # (returned at, session)
        self._live = 0  # interpreters existing now (idle or in use), at most max_interpreters
        self._waiting = 0  # calls waiting for an interpreter to be given back
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)

    def signature(self, signature_key: str | None = None) -> SignatureSpec:
        spec = self._specs.get(signature_key)
        if spec is None:
            try:
                spec = SignatureSpec(self.model, signature_key)
            except MlflowException:
                raise
            except Exception:  # a RuntimeModel read something unexpected: parse it all
                if not isinstance(self.model, RuntimeModel):
                    raise
                self.model._use_full()
                spec = SignatureSpec(self.model, signature_key)
            with self._lock:
                self._specs[signature_key] = spec
        return spec

    def new_interpreter(self, **options):
        from ai_edge_litert.interpreter import Interpreter

        self.model.check_litert_support()
        try:
            interpreter = Interpreter(**self.interpreter_source(), num_threads=self.num_threads,
                                      **options)
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:
            raise MlflowException(f"LiteRT cannot load this model: {e}") from None
        return _Session(interpreter, self.reference_interpreter if self.model.has_custom_ops
                        else None)

    def interpreter_source(self) -> dict:
        """The ``Interpreter`` keyword naming the model: its file when it has one on disk
        (LiteRT maps it), else its bytes."""
        path = getattr(self.model, "model_path", None)
        return {"model_path": path} if path and os.path.exists(path) else \
            {"model_content": self.model.model_bytes}

    def reference_interpreter(self, **options):
        """The model on LiteRT's own kernels, no delegate (not allocated): allocating it
        prepares every op, so the shapes it gives are the ones each kernel will write; with
        ``experimental_preserve_all_tensors=True`` it keeps every intermediate tensor."""
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        return Interpreter(**self.interpreter_source(), experimental_op_resolver_type=(
            OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES), **options)

    # ---- public ---------------------------------------------------------------------------

    def predict(self, feeds, signature_key: str | None = None, dequantize: bool = True,
                max_batch_rows: int | None = None):
        """Run the model; ``feeds`` is an array (single input) or a dict name -> array.

        ``max_batch_rows`` overrides the runner's chunk size for this call.
        Returns a dict output name -> array, in the signature's output order.
        """
        spec = self._specs.get(signature_key) or self.signature(signature_key)
        fast = spec.fast_input
        if fast is not None and type(feeds) is np.ndarray and feeds.dtype == fast[0] and \
                feeds.ndim == fast[1] and feeds.flags.c_contiguous and \
                (feeds.shape[1:] == fast[2] and feeds.shape[0] if spec.batched
                 else feeds.shape == fast[2]):
            # One ndarray already of the input's dtype and shape: nothing to convert.
            arrays = [feeds]
            nbytes = feeds.nbytes
        else:
            arrays = self._prepare_inputs(spec, feeds)
            nbytes = sum([a.nbytes for a in arrays])
        if max_batch_rows is not None:
            chunk = self._chunk_rows(arrays, _positive_or_none(max_batch_rows,
                                                               "max_batch_rows"))
        elif self.max_batch_rows is None and (self.max_batch_bytes is None or
                                              nbytes <= self.max_batch_bytes):
            chunk = _WHOLE  # the whole batch fits in one invoke
        else:
            chunk = self._chunk_rows(arrays, None)
        if spec.stateful:
            session = self._create()
            try:
                outputs = self._run(session, spec, arrays, chunk)
            finally:
                self._release(session)
        else:
            try:
                session = self._idle.pop()[1]  # _borrow, inlined: the most recent one
            except IndexError:
                session = self._create()
            try:
                outputs = self._run(session, spec, arrays, chunk)
            finally:
                self._give_back(session)
        if dequantize and spec.quantized_outputs:
            outputs = [o.dequantize(v) if o.quantized else v for o, v in zip(spec.outputs, outputs)]
        if len(outputs) == 1:
            return {spec.output_names[0]: outputs[0]}
        return dict(zip(spec.output_names, outputs))

    # ---- internals ------------------------------------------------------------------------

    @property
    def pooled_interpreters(self) -> int:
        """Interpreters kept for reuse now (not counting those in use)."""
        return len(self._idle)

    def _borrow(self):
        try:
            return self._idle.pop()[1]  # the most recently used one: its memory is warm
        except IndexError:
            return self._create()

    def _create(self):
        """A new interpreter, once fewer than ``max_interpreters`` exist; meanwhile one
        given back is taken instead."""
        with self._returned:
            # Counted before looking at the pool: a session given back after the look sees
            # the count and notifies (see _give_back).
            self._waiting += 1
            try:
                while self._live >= self.max_interpreters:
                    if self._idle:  # never for a stateful model: its sessions are not kept
                        return self._idle.pop()[1]
                    self._returned.wait(0.5)
                self._live += 1
            finally:
                self._waiting -= 1
        try:
            return self.new_interpreter()
        except BaseException:
            self._release(None)
            raise

    def _release(self, session):
        """Forget ``session`` (or a failed creation): room for another interpreter."""
        with self._returned:
            self._live -= 1
            self._returned.notify()

    def _give_back(self, session):
        now = time.monotonic()
        idle = self._idle
        idle.append((now, session))
        if self._waiting:
            with self._returned:
                self._returned.notify()
        if len(idle) > 1 and now - idle[0][0] >= self.idle_seconds:
            self._release_idle(now)

    def _release_idle(self, now: float):
        """Release interpreters idle too long (oldest first), keeping the newest warm."""
        with self._returned:
            while len(self._idle) > 1:
                try:
                    entry = self._idle.pop(0)
                except IndexError:
                    break
                if now - entry[0] < self.idle_seconds or not self._idle:
                    self._idle.insert(0, entry)  # not old, or borrowed meanwhile: keep it
                    break
                self._live -= 1
            self._returned.notify()

    def _prepare_inputs(self, spec: SignatureSpec, feeds) -> list[np.ndarray]:
        names = [s.name for s in spec.inputs]
        if not isinstance(feeds, dict):
            if len(spec.inputs) != 1:
                raise _bad_input(
                    f"This model has {len(names)} inputs {names}; pass a dict (or a DataFrame "
                    "with one column per input) instead of a single array."
                )
            feeds = {names[0]: feeds}
        missing = [n for n in names if n not in feeds]
        extra = [n for n in feeds if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unexpected input(s) {extra}")
            raise _bad_input(f"Inputs do not match the model: {', '.join(parts)}; "
                             f"it expects {names}.")
        arrays = [_to_input_array(s, feeds[s.name]) for s in spec.inputs]
        for s, a in zip(spec.inputs, arrays):
            _check_shape(s, a, spec.batched)
        if spec.batched:
            sizes = {a.shape[0] for a in arrays}
            if len(sizes) > 1:
                raise _bad_input(f"Inputs have different batch sizes {sorted(sizes)}.")
            if sizes == {0}:
                raise _bad_input("Empty batch: inputs have 0 rows.")
        return arrays

    def _chunk_rows(self, arrays, override: int | None) -> int:
        """Rows per invoke: the override, else ``max_batch_rows``, else what fits in
        ``max_batch_bytes`` (at least one row)."""
        rows = override or self.max_batch_rows
        if rows is None and self.max_batch_bytes is not None and arrays and arrays[0].ndim:
            row_bytes = sum(a[:1].nbytes for a in arrays)
            rows = max(1, self.max_batch_bytes // max(row_bytes, 1))
        return rows or _WHOLE

    def _run(self, session, spec: SignatureSpec, arrays, chunk: int = 2 ** 62):
        sg = spec.subgraph_index
        if not spec.batched:
            return session.run(sg, spec, arrays)
        n = arrays[0].shape[0]
        if n <= chunk and session.ready.get(sg) == _shapes(arrays):
            return session.invoke(sg, spec, arrays)  # allocated for these shapes already
        if spec.resizable_batch and not spec.stateful and n > chunk:
            # Bounded memory: invokes of at most ``chunk`` rows, results concatenated.
            parts = [self._run(session, spec, [a[i:i + chunk] for a in arrays], chunk)
                     for i in range(0, n, chunk)]
            return [np.concatenate([p[k] for p in parts], axis=0)
                    for k in range(len(spec.outputs))]
        if spec.resizable_batch and not spec.stateful and session.can_resize(sg, spec, arrays):
            return session.run(sg, spec, arrays)
        # Fixed batch of 1 (or a model that refuses a bigger batch): one row per invoke.
        rows = [session.run(sg, spec, [a[i:i + 1] for a in arrays]) for i in range(n)]
        return [np.concatenate([r[k] for r in rows], axis=0) for k in range(len(spec.outputs))]


class _Session:
    """One interpreter plus the input shapes it is currently allocated for.

    ``reference``: for models with custom kernels, a function making the model's interpreter
    without delegates, where a new batch size is first tried out (see ``can_resize``)."""

    def __init__(self, interpreter, reference=None):
        self.interpreter = interpreter
        self.reference = reference
        self._probe = None
        # The SignatureRunner's own calls, without its per-call dict building and re-allocation.
        self.wrapper = interpreter._interpreter
        self.shapes: dict[tuple[int, int], tuple[int, ...]] = {}
        self.refuses: set[tuple[int, tuple]] = set()
        # allocate_tensors() allocates the primary subgraph only; another signature's
        # subgraph is allocated on its first use.
        self.allocated: set[int] = {0}
        # Subgraph -> the input shapes it is allocated for now (one comparison per call).
        self.ready: dict[int, tuple] = {}

    def _resize(self, sg: int, spec: SignatureSpec, arrays):
        shapes = _shapes(arrays)
        if self.ready.get(sg) == shapes:
            return
        self.ready.pop(sg, None)
        changed = False
        for s, a in zip(spec.inputs, arrays):
            key = (sg, s.index)
            if a.shape != self.shapes.get(key, s.shape):
                self.wrapper.ResizeInputTensor(s.index, np.array(a.shape, dtype=np.int32),
                                               False, sg)
                self.shapes[key] = a.shape
                changed = True
        if changed or sg not in self.allocated:
            self.wrapper.AllocateTensors(sg)
            self.allocated.add(sg)
        self.ready[sg] = shapes

    def can_resize(self, sg, spec, arrays) -> bool:
        key = (sg, _shapes(arrays))
        if self.ready.get(sg) == key[1]:
            return True
        if key in self.refuses:
            return False
        try:
            if self.reference is None or self._batch_reaches_outputs(sg, spec, arrays):
                self._resize(sg, spec, arrays)
                return True
        except (ValueError, RuntimeError):
            pass
        # The interpreter may be half-resized: force every input to be set again.
        self.refuses.add(key)
        self.ready.pop(sg, None)
        for s in spec.inputs:
            self.shapes[(sg, s.index)] = None
        return False

    def _batch_reaches_outputs(self, sg, spec, arrays) -> bool:
        """Whether every output that the file says follows the batch gets the batch's rows
        when the model is allocated for ``arrays`` on its own kernels. A custom kernel whose
        Prepare keeps its stored output shape (LiteRT's ``aeq.hadamard_rotation`` does) would
        write a whole batch into a one-row buffer at Invoke: heap corruption, not an error.
        Such a model runs row by row. (The delegated interpreter itself cannot tell: XNNPACK
        sets its output shapes at Invoke.)"""
        if self._probe is None:
            self._probe = self.reference()
        probe = self._probe._interpreter
        for s, a in zip(spec.inputs, arrays):
            probe.ResizeInputTensor(s.index, np.array(a.shape, dtype=np.int32), False, sg)
        probe.AllocateTensors(sg)
        for o in spec.outputs:
            if not o.shape_signature or o.shape_signature[0] != -1:
                continue
            try:
                probe.GetTensor(o.index, sg)  # raises while unallocated (behind a dynamic op)
            except ValueError:
                continue
            if probe.TensorSize(o.index, sg)[0] != arrays[0].shape[0]:
                return False
        return True

    def run(self, sg: int, spec: SignatureSpec, arrays) -> list[np.ndarray]:
        if self.ready.get(sg) != _shapes(arrays):
            try:
                self._resize(sg, spec, arrays)
            except (ValueError, RuntimeError) as e:
                raise MlflowException(f"LiteRT failed to run the model: {e}") from None
        return self.invoke(sg, spec, arrays)

    def invoke(self, sg: int, spec: SignatureSpec, arrays) -> list[np.ndarray]:
        """``run`` once the subgraph is allocated for these input shapes (the caller
        checked ``ready``): set the inputs, invoke, copy the outputs out."""
        wrapper = self.wrapper
        try:
            if len(arrays) == 1:  # no loop for the common case: this is per call
                wrapper.SetTensor(spec.input_indices[0], arrays[0], sg)
            else:
                for i, a in zip(spec.input_indices, arrays):
                    wrapper.SetTensor(i, a, sg)
            if spec.reset_variables:
                self.interpreter.reset_all_variables()
            wrapper.Invoke(sg)
            if len(spec.output_indices) == 1:
                return [wrapper.GetTensor(spec.output_indices[0], sg)]
            return [wrapper.GetTensor(i, sg) for i in spec.output_indices]
        except (ValueError, RuntimeError) as e:
            raise MlflowException(f"LiteRT failed to run the model: {e}") from None


_WHOLE = 2 ** 62  # a chunk size: no chunking


def _shapes(arrays) -> tuple:
    return (arrays[0].shape,) if len(arrays) == 1 else tuple([a.shape for a in arrays])


def _positive_or_none(value, name: str) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if isinstance(value, bool) or number < 1 or number != value and not (
            isinstance(value, str) and value.strip().isdigit()):
        raise _bad_input(f"{name} must be a positive integer, got {value!r}.")
    return number


def _to_input_array(s: TensorSpec, value) -> np.ndarray:
    try:
        array = np.asarray(value)
    except Exception as e:
        raise _bad_input(f"Input '{s.name}' cannot be read as an array: {e}") from None
    if s.dtype == object:
        return _to_string_array(s, array)
    if array.dtype == object:
        try:
            array = np.stack([np.asarray(v) for v in array.reshape(-1)]).reshape(
                array.shape + np.asarray(array.reshape(-1)[0]).shape
            )
        except Exception:
            raise _bad_input(f"Input '{s.name}' is a ragged or non-numeric array.") from None
    if s.quantized:
        if array.dtype == s.dtype:
            return np.ascontiguousarray(array)  # already quantized: pass through unchanged
        if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or \
                np.issubdtype(array.dtype, np.complexfloating):
            raise _bad_input(f"Input '{s.name}' has dtype {array.dtype}, expected real numbers.")
        return s.quantize(array)
    return np.ascontiguousarray(_cast(s, array))


def _to_string_array(s: TensorSpec, array: np.ndarray) -> np.ndarray:
    """A STRING input: str (encoded as UTF-8) or bytes elements, as an object array."""
    if array.dtype.kind not in "USO":
        raise _bad_input(f"Input '{s.name}' is a STRING tensor; got dtype {array.dtype}, "
                         "expected strings or bytes.")
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=object)
    for i, v in enumerate(flat):
        if isinstance(v, (str, np.str_)):
            out[i] = str(v).encode("utf-8")
        elif isinstance(v, (bytes, np.bytes_)):
            out[i] = bytes(v)
        else:
            raise _bad_input(f"Input '{s.name}' is a STRING tensor; it holds a "
                             f"{type(v).__name__}, expected strings or bytes.")
    return out.reshape(array.shape)


def string_outputs_as_text(value):
    """STRING outputs (object arrays of bytes) as str arrays (UTF-8, undecodable bytes
    replaced), for callers that exchange JSON; other arrays unchanged."""
    if isinstance(value, dict):
        return {k: string_outputs_as_text(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.dtype == object and value.size and \
            all(isinstance(v, bytes) for v in value.reshape(-1)):
        decoded = [v.decode("utf-8", errors="replace") for v in value.reshape(-1)]
        return np.array(decoded, dtype=str).reshape(value.shape)
    return value


def _cast(s: TensorSpec, array: np.ndarray) -> np.ndarray:
    target = s.dtype
    if array.dtype == target:
        return array
    if np.issubdtype(array.dtype, np.complexfloating) and not np.issubdtype(
            target, np.complexfloating):
        raise _bad_input(f"Input '{s.name}' has complex dtype {array.dtype}; the model's "
                         f"{target.name} cannot hold the imaginary part.")
    if np.issubdtype(target, np.floating):
        if np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_:
            return array.astype(target)
    elif np.issubdtype(target, np.integer) or target == np.bool_:
        if np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_:
            return array.astype(target)
        if np.issubdtype(array.dtype, np.floating):
            # JSON carries ids as floats; accept them only when nothing would be lost.
            if np.all(np.isfinite(array)) and np.all(np.mod(array, 1) == 0):
                return array.astype(target)
    raise _bad_input(f"Input '{s.name}' has dtype {array.dtype}, which cannot be converted "
                     f"to the model's {target.name} without loss.")


def _check_shape(s: TensorSpec, array: np.ndarray, batched: bool):
    expected = list(s.shape_signature)
    if batched:
        expected[0] = -1
    if array.ndim != len(expected) or any(
        e != -1 and e != a for e, a in zip(expected, array.shape)
    ):
        shown = ["N" if (batched and i == 0) else ("?" if d == -1 else d)
                 for i, d in enumerate(expected)]
        raise _bad_input(f"Input '{s.name}' has shape {list(array.shape)}, the model expects "
                         f"[{', '.join(map(str, shown))}].")

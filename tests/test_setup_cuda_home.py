"""setup.py's choice of CUDA toolkit (issue 15, fix 7), without a build: torch guesses the parent of
the `nvcc` on PATH, which is wrong when that nvcc is a wrapper script (/usr/local/bin/nvcc running
/usr/local/cuda-13.0/bin/nvcc): the build compiled, then failed to link (`cannot find -lcudart`)."""
import importlib.util
import os
import shutil
import stat
import types

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup_py():
    spec = importlib.util.spec_from_file_location("rnnfast_setup", os.path.join(ROOT, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines the helpers; setup() runs only as __main__
    return mod


def executable(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_toolkit(root):
    """A toolkit layout (bin/nvcc whose --dryrun reports its folder, lib64/libcudart.so) and a wrapper
    script outside it, as on the development machine."""
    home = root / "cuda-13.0"
    nvcc = executable(home / "bin" / "nvcc", f"#!/bin/sh\necho '#$ _HERE_={home}/bin'\necho '#$ _THERE_={home}/bin'\n")
    (home / "lib64").mkdir(parents=True)
    (home / "lib64" / "libcudart.so").write_text("")
    wrapper = executable(root / "usr-local" / "bin" / "nvcc", f'#!/bin/sh\nexec {nvcc} "$@"\n')
    return home, wrapper


def test_wrapper_nvcc_resolved_to_its_toolkit(setup_py, tmp_path):
    home, wrapper = fake_toolkit(tmp_path)
    torch_guess = str(wrapper.parent.parent)  # what torch guesses: the wrapper's parent, no toolkit
    assert not setup_py._is_toolkit(torch_guess)
    found = setup_py.find_cuda_home(torch_guess, environ={}, which=lambda name: str(wrapper), search=())
    assert found == str(home)


def test_symlinked_nvcc_resolved_to_its_toolkit(setup_py, tmp_path):
    home, _ = fake_toolkit(tmp_path)
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    link.symlink_to(home / "bin" / "nvcc")
    found = setup_py.find_cuda_home(str(tmp_path), environ={}, which=lambda name: str(link), search=(),
                                    run=lambda *a, **k: types.SimpleNamespace(stdout="", stderr=""))
    assert found == str(home)


def test_torch_guess_kept_when_it_is_a_toolkit_and_env_wins(setup_py, tmp_path):
    home, wrapper = fake_toolkit(tmp_path)
    assert setup_py.find_cuda_home(str(home), environ={}, which=lambda name: str(wrapper), search=()) == str(home)
    assert setup_py.find_cuda_home(str(home), environ={"CUDA_HOME": "/opt/mine"}, which=shutil.which) == "/opt/mine"
    assert setup_py.find_cuda_home(None, environ={"CUDA_PATH": "/opt/p"}, which=shutil.which) == "/opt/p"


def test_search_of_usr_local_cuda_when_nvcc_says_nothing(setup_py, tmp_path):
    home, wrapper = fake_toolkit(tmp_path)
    silent = lambda *a, **k: types.SimpleNamespace(stdout="", stderr="")  # noqa: E731
    found = setup_py.find_cuda_home(str(wrapper.parent.parent), environ={}, which=lambda name: str(wrapper),
                                    run=silent, search=(str(tmp_path / "cuda-*"),))
    assert found == str(home)


def test_nvcc_without_toolkit_says_what_to_set(setup_py, tmp_path):
    lonely = executable(tmp_path / "bin" / "nvcc", "#!/bin/sh\nexit 1\n")
    with pytest.raises(SystemExit, match="Set CUDA_HOME to the toolkit's root.*RNNFAST_CUDA=0"):
        setup_py.find_cuda_home(str(tmp_path), environ={}, which=lambda name: str(lonely), search=())


def test_no_nvcc_at_all_means_a_cpu_build(setup_py):
    assert setup_py.find_cuda_home(None, environ={}, which=lambda name: None, search=()) is None


def test_extensions_link_against_the_found_toolkit(setup_py, tmp_path, monkeypatch):
    # A CUDA torch (faked: torch.version.cuda) whose CUDA_HOME guess is a wrapper's parent: the
    # extension's include and library folders must come from the real toolkit.
    import torch.utils.cpp_extension as cpp_extension

    home, wrapper = fake_toolkit(tmp_path)
    (home / "include").mkdir()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(cpp_extension, "CUDA_HOME", str(wrapper.parent.parent))
    monkeypatch.setenv("PATH", f"{wrapper.parent}{os.pathsep}{os.environ['PATH']}")
    for var in ("CUDA_HOME", "CUDA_PATH", "RNNFAST_CUDA", "TORCH_CUDA_ARCH_LIST"):
        monkeypatch.delenv(var, raising=False)
    real = setup_py.find_cuda_home
    monkeypatch.setattr(setup_py, "find_cuda_home",
                        lambda guess: real(guess, environ={}, which=lambda name: str(wrapper), search=()))
    ext_modules, cmdclass = setup_py.extensions()
    (ext,) = ext_modules
    assert any(src.endswith(".cu") for src in ext.sources)
    assert os.path.join(str(home), "lib64") in ext.library_dirs
    assert os.path.join(str(home), "include") in ext.include_dirs
    assert "cudart" in ext.libraries


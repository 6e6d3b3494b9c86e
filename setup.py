"""Packaging for fmri-lm (import package ``fmrilm``)."""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent

INSTALL_REQUIRES = [
    # torch is installed first by the Makefile (torch==2.13.0, a CPU wheel on this machine); a range
    # here that the installed wheel satisfies keeps pip from fetching a multi-GB CUDA build.
    "torch>=2.4",
    "transformers>=5.24",
    "tokenizers>=0.21",
    "huggingface-hub>=1.0",
    "datasets>=4.0",
    "accelerate>=1.0",
    "peft>=0.17",
    "evaluate>=0.4",
    "numpy>=1.26",
    "scipy>=1.11",
    "scikit-learn>=1.3",
    "pandas>=2.0",
    "pyarrow>=15",
    "nibabel>=5.0",
    "h5py>=3.9",
    "tqdm>=4.66",
    "pyyaml>=6.0",
    "jinja2>=3.1",  # model cards and chat templates
    "matplotlib>=3.8",  # fmrilm report
    "rouge-score>=0.1.2",
    "sacrebleu>=2.4",
]

EXTRAS = {
    # Reference implementations used only to check ours (tests) and to time ours against (bench/).
    "test": ["pytest>=8", "pytest-xdist>=3.5", "nilearn>=0.11", "networkx>=3.0"],
}
EXTRAS["dev"] = sorted(set(EXTRAS["test"]) | {"ruff"})

setup(
    name="fmri-lm",
    version="0.1.0.dev0",
    description="Language-aligned fMRI foundation model (fMRI-LM), Hugging Face native",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["fmrilm", "fmrilm.*"]),
    include_package_data=True,
    package_data={
        "fmrilm": ["atlas_data/*.tsv", "model_cards/*.md", "metrics/fmri_task_metrics/*.py", "training/configs/*.yaml"]
    },
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["fmrilm=fmrilm.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
    ],
)

"""Every segkn command shown in the README and the docs is accepted by the current command line."""

from pathlib import Path

import pytest

from tests.test_dockerfile import doc_command_errors

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "weights/README.md", "docs/datasets.md", "docs/configs.md", "docs/deployment.md"]


@pytest.mark.parametrize("doc", DOCS)
def test_doc_commands_parse_with_the_current_cli(doc):
    errors, _ = doc_command_errors((ROOT / doc).read_text(), ["segkn"])
    assert not errors, f"{doc}:\n" + "\n".join(errors)


def test_readme_shows_train_eval_infer_and_export():
    _, checked = doc_command_errors((ROOT / "README.md").read_text(), ["segkn"])
    assert {"train", "eval", "infer", "export", "shapes"} <= {argv.split()[0] for argv in checked}

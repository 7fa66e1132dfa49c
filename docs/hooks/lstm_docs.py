"""MkDocs hook of lstm-spec (mkdocs.yml: hooks). The work is done by the package next to this file,
docs/hooks/lstm_spec_docs: formulas from the derivation, numbers and plots from the reference, the
slides' errata, the API page and the offline math renderer. See lstm_spec_docs/site.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from lstm_spec_docs import site


def on_config(config):
    return site.on_config(config)


def on_files(files, config):
    return site.on_files(files, config)


def on_page_markdown(markdown, page, config, files):
    return site.on_page_markdown(markdown, page, config, files)

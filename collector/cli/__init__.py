"""gpuaudit-collector: the collector's command line.

Exit codes (attestation/exitcodes.py, the same for every gpuaudit command): 0 ok; 1 the
answer is no (findings with ``--fail-on-findings``, a log audit that does not match, a
finding or key that is not there); 2 usage or configuration; 3 environment (a file or
folder missing, a port in use, Prometheus or the store unreachable); 4 unexpected error;
130 interrupted. Every error is one ``error:`` line on stderr.

``app.py`` builds the parser and runs a command; each command (or group of commands) has its
module, which adds its subcommand to the parser: ``serve.py``, ``enroll.py`` (``token``,
``key``, ``ca``), ``findings.py``, ``detect.py``, ``export.py``, ``report.py``, ``log.py``,
``tenant.py``, ``maintenance.py`` (``retention``, ``backup``, ``restore``), ``demo.py``. What
several commands share: ``settings.py`` (the configuration a command runs with),
``store_factory.py`` (the configured store), ``directory.py`` (the tenants a command reads)
and ``findings_text.py`` (findings for a person).
"""

from collector.cli.app import build_parser, classify_error, main
from collector.cli.findings_text import format_findings
from collector.cli.settings import detect_config_from_table

__all__ = ["build_parser", "classify_error", "detect_config_from_table", "format_findings", "main"]

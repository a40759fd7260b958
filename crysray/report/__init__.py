"""A run's report: counts, space groups, elements and funnel stages as Markdown, JSON and plots."""

from crysray.report.summary import build_report, markdown

__all__ = ["build_report", "markdown"]

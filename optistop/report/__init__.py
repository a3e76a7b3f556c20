"""The paper's experiments rerun: report builder, markdown, plots (reads optistop.offline results)."""

"""One module per pipeline step, each ``run(ctx) -> None`` (order lives in ``pipeline.STEPS``)."""

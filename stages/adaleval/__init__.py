"""Ada-LEval (spec adaleval.md): TSort items (`tsort`), BestAnswer threads, plan and items
(`bestanswer`), Ada-LEval's prompts and both scorers (`core`)."""

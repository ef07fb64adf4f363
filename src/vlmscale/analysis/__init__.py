"""From cells to the law: FLOP accounting, the grid table, the scaling-law fit, the report."""

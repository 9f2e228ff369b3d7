"""What several worlds share: best-of-k experts under a checker (smol, paper) and HbAT's conflict scoring."""

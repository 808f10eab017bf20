"""The commands that use finished runs: dlrun-eval, dlrun-predict, dlrun-export, dlrun-report."""

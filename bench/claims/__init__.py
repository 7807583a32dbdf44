"""Pre-registered claims (bench/claims/README.md): claim files, their problem sets, statistics, report and runner."""

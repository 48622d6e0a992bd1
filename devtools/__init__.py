"""Development tools that are not part of the installed package: a throw-away
Dovecot (`devserver`) for the tests, the benchmarks and the demo (`demo`)."""

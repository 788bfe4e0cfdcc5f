"""The PSGI worker: the plackup bridge (preflight, environment, exec) and the Perl files
(`Plack::Handler::Pymaster`, `Plack::Loader::Pymaster`) in `perl/`."""

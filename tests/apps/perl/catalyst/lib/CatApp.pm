package CatApp;
# A minimal Catalyst app for the framework tests (tests/integration/test_psgi_frameworks.py).
# Catalyst puts an :encoding(UTF-8) layer on STDERR at setup, which once killed every
# pymaster worker on its first log line.
use strict;
use warnings;
use Catalyst::Runtime 5.80;
use Catalyst;

__PACKAGE__->config(name => 'CatApp', encoding => 'UTF-8',
                    disable_component_resolution_regex_fallback => 1);
__PACKAGE__->setup;

1;

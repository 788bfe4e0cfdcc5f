# A Catalyst app that needs a module that is not installed: the load error must show.
use strict;
use warnings;
use Catalyst;
use Pymaster::Test::No::Such::Module;

__PACKAGE__->setup;
__PACKAGE__->psgi_app;

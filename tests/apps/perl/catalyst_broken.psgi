# A Catalyst app that needs a module that is not installed, loaded after Catalyst's setup
# has put its :encoding(UTF-8) layer on STDERR: the real load error must show.
use strict;
use warnings;
package BrokenCat;
use Catalyst;

__PACKAGE__->config(name => 'BrokenCat', encoding => 'UTF-8');
__PACKAGE__->setup;
require Pymaster::Test::No::Such::Module;

__PACKAGE__->psgi_app;

# The Catalyst test app (catalyst/lib/CatApp.pm).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/catalyst/lib", "$FindBin::Bin/lib";
use CatApp;

CatApp->apply_default_middlewares(CatApp->psgi_app);

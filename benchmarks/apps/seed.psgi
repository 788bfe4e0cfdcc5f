# The seed's app.psgi with __DATA__ instead of __END__: uWSGI's psgi plugin and Starman load
# .psgi files with do FILE and cannot read a template after __END__ (pymaster can; see
# examples/app.psgi). Same code otherwise, so every server renders the same page.
use strict;
use warnings;
use utf8;
use Encode qw/encode_utf8/;
use Text::Xslate;

my $tpl = do { local $/; <DATA> };

sub {
    [
        200,
        ['Content-Type' => 'text/html; charset=UTF8'],
        [encode_utf8(Text::Xslate->new->render_string($tpl, {pid => $$}))]
    ]
};
__DATA__
<img src="/static/hokkaidopm.gif">
<div style="font-size:100px;">PID: <: $pid :></div>

# The Dancer2 test app (tests/integration/test_psgi_frameworks.py): routes, a form, an
# upload, a streamed (delayed) response. Dancer2's WebSocket plugin needs an event loop
# server (Twiggy); a blocking WebSocket on psgix.io is left to the app (websocket.psgi).
use strict;
use warnings;
package DancerApp;
use Dancer2;
use Digest::MD5 ();

set content_type => 'text/plain';
set logger => 'null';

get '/' => sub { "dancer2 index\n" };
get '/hello/:name' => sub { 'hello ' . route_parameters->get('name') . "\n" };
post '/form' => sub {
    my $p = body_parameters;
    join '', map { "$_=" . $p->get($_) . "\n" } sort $p->keys;
};
post '/upload' => sub {
    my $u = upload('file') or die "no upload\n";
    my $md5 = Digest::MD5->new->add($u->content)->hexdigest;
    join(' ', $u->basename, $u->size, $md5, body_parameters->get('note') // '') . "\n";
};
get '/stream' => sub {
    delayed {
        flush;
        content "line $_\n" for 1 .. 5;
        done;
    };
};

package main;
DancerApp->to_app;

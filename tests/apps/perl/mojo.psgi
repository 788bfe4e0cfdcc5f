# The Mojolicious::Lite test app (tests/integration/test_psgi_frameworks.py): routes, a form,
# an upload, a streamed response. Mojolicious does no WebSockets under PSGI
# (Mojo::Server::PSGI: "WebSockets are not supported").
use strict;
use warnings;
use Mojolicious::Lite -signatures;
use Mojo::Server::PSGI;
use Digest::MD5 ();

app->log->level('fatal');
get '/' => sub ($c) { $c->render(text => "mojo index\n", format => 'txt') };
get '/hello/:name' => sub ($c) { $c->render(text => 'hello ' . $c->param('name') . "\n", format => 'txt') };
post '/form' => sub ($c) {
    my $p = $c->req->body_params->to_hash;
    $c->render(text => join('', map { "$_=$p->{$_}\n" } sort keys %$p), format => 'txt');
};
post '/upload' => sub ($c) {
    my $u = $c->req->upload('file') or die "no upload\n";
    my $md5 = Digest::MD5::md5_hex($u->slurp);
    $c->render(text => join(' ', $u->filename, $u->size, $md5, $c->param('note') // '') . "\n",
               format => 'txt');
};
get '/stream' => sub ($c) {    # chunks written up front: under PSGI no event loop drains them
    $c->res->headers->content_type('text/plain');
    $c->write_chunk("line $_\n") for 1 .. 5;
    $c->finish;
};

my $server = Mojo::Server::PSGI->new(app => app);
$server->to_psgi_app;

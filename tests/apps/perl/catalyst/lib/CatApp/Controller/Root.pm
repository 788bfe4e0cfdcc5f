package CatApp::Controller::Root;
use strict;
use warnings;
use parent 'Catalyst::Controller';
use Digest::MD5 ();
use WsEcho;

__PACKAGE__->config(namespace => '');

sub index :Path :Args(0) {
    my ($self, $c) = @_;
    $c->log->info("caf\x{e9} \x{263a} logged through Catalyst");   # a wide character on STDERR
    $c->res->content_type('text/plain');
    $c->res->body("catalyst index\n");
}

sub hello :Local :Args(1) {
    my ($self, $c, $name) = @_;
    $c->res->content_type('text/plain');
    $c->res->body("hello $name\n");
}

sub form :Local :Args(0) {
    my ($self, $c) = @_;
    my $p = $c->req->body_parameters;
    $c->res->content_type('text/plain');
    $c->res->body(join '', map { "$_=$p->{$_}\n" } sort keys %$p);
}

sub upload :Local :Args(0) {
    my ($self, $c) = @_;
    my $u = $c->req->upload('file') or die "no upload\n";
    my $md5 = Digest::MD5->new->add($u->slurp)->hexdigest;
    $c->res->content_type('text/plain');
    $c->res->body(join(' ', $u->filename, $u->size, $md5, $c->req->param('note') // '') . "\n");
}

sub stream :Local :Args(0) {
    my ($self, $c) = @_;
    $c->res->content_type('text/plain');
    $c->res->write("line $_\n") for 1 .. 5;
}

sub ws :Local :Args(0) {      # a WebSocket on $c->req->io_fh (psgix.io)
    my ($self, $c) = @_;
    my $fh = $c->req->io_fh;
    WsEcho::serve($c->req->env, $fh);
    close $fh;
}

sub default :Path {
    my ($self, $c) = @_;
    $c->res->status(404);
    $c->res->content_type('text/plain');
    $c->res->body("not found\n");
}

1;

// A v1 pull by a real third-party client, the npm package
// docker-registry-client (Joyent's, for Triton): it detects the protocol,
// starts a session with `GET /v1/repositories/<repo>/images`
// (`X-Docker-Token: true`), then reads the tags, the tagged image's
// ancestry, and each image's JSON and layer stream.
//
//   U=user P=password node pull.js HOST:PORT/NAMESPACE/REPO TAG
//
// Prints one JSON object: {"tags", "layers": [{"id", "sha256", "bytes"}]},
// base layer first; on failure {"error", "status"} and exit status 1.
'use strict';
var crypto = require('crypto');
var bunyan = require('bunyan');
var drc = require('docker-registry-client');

var name = process.argv[2];
var tag = process.argv[3] || 'latest';

function fail(err) {
    console.log(JSON.stringify({error: err.message, status: err.statusCode || null}));
    process.exit(1);
}

drc.createClient({
    version: 1,
    name: name,
    username: process.env.U,
    password: process.env.P,
    log: bunyan.createLogger({name: 'v1-pull', level: 'fatal'})
}, function (err, client) {
    if (err) { return fail(err); }
    client.listRepoTags(function (err, tags) {
        if (err) { return fail(err); }
        if (!tags[tag]) { return fail(new Error('no tag ' + tag)); }
        client.getImgAncestry({imgId: tags[tag]}, function (err, ancestry) {
            if (err) { return fail(err); }
            var ids = ancestry.slice().reverse();
            var layers = [];
            (function next(i) {
                if (i === ids.length) {
                    console.log(JSON.stringify({tags: tags, layers: layers}));
                    client.close();
                    return;
                }
                client.getImgJson({imgId: ids[i]}, function (err) {
                    if (err) { return fail(err); }
                    client.getImgLayerStream({imgId: ids[i]}, function (err, stream) {
                        if (err) { return fail(err); }
                        var hash = crypto.createHash('sha256');
                        var bytes = 0;
                        stream.on('data', function (d) { hash.update(d); bytes += d.length; });
                        stream.on('error', fail);
                        stream.on('end', function () {
                            layers.push({id: ids[i], sha256: hash.digest('hex'), bytes: bytes});
                            next(i + 1);
                        });
                        stream.resume();
                    });
                });
            })(0);
        });
    });
});

'use strict';
// Placeholder for the npm name "http" that hyco-ws 1.0.5 lists as a dependency.
// require('http') always resolves to Node's core module, so this file is never loaded.
module.exports = require('node:http');

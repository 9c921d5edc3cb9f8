/* The route table of routes.h, as data. */
#include "routes.h"

const apiroute api_routes[API_ROUTE_COUNT] = {
#define API_ROUTE_ROW(method_, path_, auth_, runs_, handler_)                                  \
    {.method = method_, .path = path_, .label = method_ " " path_, .auth = auth_,             \
     .runs = runs_, .handle = handler_},
    API_ROUTES(API_ROUTE_ROW)
#undef API_ROUTE_ROW
};
